package ui

import (
	"image/color"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

// Chevrons for the form's section headers (Material Icons, Apache 2.0): Fyne's
// accordion draws ▲/▼, the same ▼ as every drop-down of the form, so a closed
// section read as one more drop-down. A chevron ▸/▾ reads as "opens".
var (
	chevronRightIcon = theme.NewThemedResource(fyne.NewStaticResource("chevron-right.svg", []byte(
		`<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24" viewBox="0 0 24 24"><path fill="#000000" d="M10 6 8.59 7.41 13.17 12l-4.58 4.59L10 18l6-6z"/></svg>`)))
	chevronDownIcon = theme.NewThemedResource(fyne.NewStaticResource("chevron-down.svg", []byte(
		`<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24" viewBox="0 0 24 24"><path fill="#000000" d="M16.59 8.59 12 13.17 7.41 8.59 6 10l6 6 6-6z"/></svg>`)))
)

// currentTheme is the app's theme as it is now, for a subtree that a theme
// override must give back to it (a section's fields inside the headers' theme).
type currentTheme struct{}

func (currentTheme) app() fyne.Theme { return fyne.CurrentApp().Settings().Theme() }

func (t currentTheme) Color(n fyne.ThemeColorName, v fyne.ThemeVariant) color.Color {
	return t.app().Color(n, v)
}
func (t currentTheme) Font(s fyne.TextStyle) fyne.Resource     { return t.app().Font(s) }
func (t currentTheme) Icon(n fyne.ThemeIconName) fyne.Resource { return t.app().Icon(n) }
func (t currentTheme) Size(n fyne.ThemeSizeName) float32       { return t.app().Size(n) }

// foldTheme is the app's theme with chevrons where the accordion asks for its
// arrows: it themes only the headers, each section's fields keep currentTheme.
type foldTheme struct{ currentTheme }

func (t foldTheme) Icon(n fyne.ThemeIconName) fyne.Resource {
	switch n {
	case theme.IconNameArrowDropDown: // a closed section
		return chevronRightIcon
	case theme.IconNameArrowDropUp: // an open one
		return chevronDownIcon
	}
	return t.currentTheme.Icon(n)
}

// newFolds is the form's accordion of sections with chevron headers.
func newFolds(titles []string, details []fyne.CanvasObject) (*widget.Accordion, fyne.CanvasObject) {
	items := make([]*widget.AccordionItem, len(titles))
	for i, t := range titles {
		items[i] = widget.NewAccordionItem(t, container.NewThemeOverride(details[i], currentTheme{}))
	}
	acc := widget.NewAccordion(items...)
	acc.MultiOpen = true
	return acc, container.NewThemeOverride(acc, foldTheme{})
}
