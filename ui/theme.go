package ui

import (
	"image/color"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/theme"
)

// studioTheme is the default theme with a dark variant and a violet accent:
// image work reads best on a dark, neutral surround (as in every studio app),
// and the accent marks the one action that matters, Generate.
type studioTheme struct{ fyne.Theme }

func newStudioTheme() fyne.Theme { return studioTheme{theme.DefaultTheme()} }

var (
	accent      = color.NRGBA{R: 0x8b, G: 0x5c, B: 0xf6, A: 0xff}
	accentHover = color.NRGBA{R: 0x8b, G: 0x5c, B: 0xf6, A: 0x40}
	surface     = color.NRGBA{R: 0x1b, G: 0x1c, B: 0x21, A: 0xff}
	canvasBg    = color.NRGBA{R: 0x12, G: 0x13, B: 0x17, A: 0xff}
)

func (t studioTheme) Color(n fyne.ThemeColorName, _ fyne.ThemeVariant) color.Color {
	switch n {
	case theme.ColorNamePrimary, theme.ColorNameFocus:
		return accent
	case theme.ColorNameSelection:
		return accentHover
	case theme.ColorNameBackground:
		return surface
	}
	return t.Theme.Color(n, theme.VariantDark)
}

func (t studioTheme) Size(n fyne.ThemeSizeName) float32 {
	switch n {
	case theme.SizeNameInputRadius, theme.SizeNameSelectionRadius:
		return 6
	}
	return t.Theme.Size(n)
}
