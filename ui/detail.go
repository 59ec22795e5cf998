package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"sort"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/media"
	"atelier/core/request"
	"atelier/core/store"
)

// detailView shows one image of the gallery at full size with every
// parameter, and its actions.
type detailView struct {
	g      *galleryView
	d      *store.ImageDetail
	img    *canvas.Image
	title  *widget.Label
	params *fyne.Container // key/value rows
	back   *widget.Button
	use    *widget.Button
	toInit *widget.Button
	up     *widget.Button
	folder *widget.Button
	star   *widget.Button
	del    *widget.Button
	export *widget.Button
	more   *widget.Button // a menu: Export…, Open folder
	box    fyne.CanvasObject
	ask    *confirmDialog // the open delete question, if any

	// "Check it reproduces" (detail_check.go): the button, the progress
	// while it regenerates, and the result; checks by image id.
	check     *widget.Button
	checkBar  *widget.ProgressBarInfinite
	checkNote *widget.Label
	checks    map[int64]*checkState
	scroll    *container.Scroll // the parameters and the check's result
}

func newDetailView(g *galleryView) *detailView {
	v := &detailView{g: g, img: &canvas.Image{FillMode: canvas.ImageFillContain, ScaleMode: canvas.ImageScaleSmooth}}
	v.title = widget.NewLabelWithStyle("", fyne.TextAlignLeading, fyne.TextStyle{Bold: true})
	v.title.Wrapping = fyne.TextWrapWord
	v.params = container.New(layout.NewFormLayout())
	v.back = widget.NewButtonWithIcon("Gallery", theme.NavigateBackIcon(), g.closeDetail)
	v.use = widget.NewButtonWithIcon("Use these settings", theme.ContentRedoIcon(), v.useSettings)
	v.use.Importance = widget.HighImportance
	v.toInit = widget.NewButtonWithIcon("Use as init image", theme.MediaReplayIcon(), v.useAsInit)
	v.up = widget.NewButtonWithIcon("Upscale", theme.ZoomInIcon(), func() {
		if v.d != nil {
			g.s.upscaleImage(v.d.Path, v.d.Request)
		}
	})
	v.folder = widget.NewButtonWithIcon("Open folder", theme.FolderOpenIcon(), v.openFolder)
	v.star = widget.NewButtonWithIcon("Star", theme.NewWarningThemedResource(starIcon), v.toggleStar)
	v.del = widget.NewButtonWithIcon("Delete…", theme.DeleteIcon(), v.askDelete)
	v.del.Importance = widget.LowImportance
	v.export = widget.NewButtonWithIcon("Export…", theme.DocumentSaveIcon(), func() {
		if v.d != nil {
			g.exportIDs([]int64{v.d.ID})
		}
	})
	v.more = widget.NewButtonWithIcon("More", theme.MoreHorizontalIcon(), v.showMore)
	v.newCheck()
	return v
}

// moreItems are the actions of the More menu, from the buttons that do them.
func (v *detailView) moreItems() []*fyne.MenuItem {
	var items []*fyne.MenuItem
	for _, b := range []*widget.Button{v.export, v.folder} {
		item := fyne.NewMenuItem(b.Text, b.OnTapped)
		item.Icon = b.Icon
		items = append(items, item)
	}
	return items
}

// showMore opens the More menu under its button.
func (v *detailView) showMore() {
	c := v.g.s.win.Canvas()
	pos := fyne.CurrentApp().Driver().AbsolutePositionForObject(v.more).Add(fyne.NewPos(0, v.more.Size().Height))
	widget.ShowPopUpMenuAtPosition(fyne.NewMenu("", v.moreItems()...), c, pos)
}

func (v *detailView) content() fyne.CanvasObject {
	bg := canvas.NewRectangle(canvasBg)
	bg.CornerRadius = 10
	stage := container.NewStack(bg, container.NewPadded(v.img))
	// What one does with an image first: use its settings, or the image
	// itself; then the check and the star; the rest in More; Delete apart,
	// away from the others and asked again before it acts.
	actions := container.NewVBox(v.use,
		container.NewGridWithColumns(2, v.toInit, v.up),
		container.NewGridWithColumns(2, v.check, v.star),
		container.NewGridWithColumns(2, v.more, layout.NewSpacer()),
		widget.NewSeparator(),
		container.NewHBox(layout.NewSpacer(), v.del))
	// The check's progress and result follow the parameters, where a long
	// result wraps to the width of the column; the scroll goes down to them.
	v.scroll = container.NewVScroll(container.NewVBox(v.params, v.checkBar, v.checkNote))
	side := container.NewBorder(container.NewVBox(v.title, widget.NewSeparator()), container.NewPadded(actions), nil, nil,
		v.scroll)
	split := container.NewHSplit(stage, container.NewPadded(side))
	split.Offset = 0.62
	v.box = container.NewBorder(container.NewHBox(v.back), nil, nil, nil, split)
	return v.box
}

// show loads image id.
func (v *detailView) show(id int64) error {
	d, err := v.g.store().GetImage(context.Background(), id)
	if err != nil {
		return err
	}
	v.d = d
	v.img.Image, v.img.File = nil, d.Path
	v.img.Refresh()
	v.title.SetText(strings.Join(strings.Fields(d.Request.Prompt), " "))
	v.params.Objects = nil
	for _, kv := range detailRows(d) {
		// The names in bold rather than dimmed: low importance read as disabled.
		k := widget.NewLabelWithStyle(kv[0], fyne.TextAlignTrailing, fyne.TextStyle{Bold: true})
		val := widget.NewLabel(kv[1])
		val.Wrapping = fyne.TextWrapWord
		val.Selectable = true
		v.params.Objects = append(v.params.Objects, k, val)
	}
	v.params.Refresh()
	v.showStar()
	v.showCheck()
	return nil
}

// detailRows is every parameter of the image, in reading order.
func detailRows(d *store.ImageDetail) [][2]string {
	r := d.Request
	rows := [][2]string{
		{"Prompt", r.Prompt},
		{"Negative", r.NegativePrompt},
		{"Model", r.Model},
		{"Scheduler", r.Scheduler},
		{"Steps", fmt.Sprint(r.Steps)},
		{"CFG", formatFloat(r.CFG)},
		{"Size", fmt.Sprintf("%d × %d", d.Width, d.Height)},
		{"Seed", fmt.Sprint(d.Seed)},
	}
	// Every other setting the request carries, by its JSON name, so that new
	// request fields show up here without a change.
	rows = append(rows, extraRequestFields(r)...)
	rows = append(rows, [2]string{"Created", d.CreatedAt.Local().Format("2006-01-02 15:04:05")})
	if m := d.Metrics; m != nil {
		rows = append(rows, [2]string{"Time", fmt.Sprintf("%.1f s (load %.1f s, denoise %.1f s)", m.TotalS, m.LoadS, m.DenoiseS)})
		if m.ItS > 0 {
			rows = append(rows, [2]string{"Speed", fmt.Sprintf("%.2f it/s", m.ItS)})
		}
		if m.Device != "" {
			rows = append(rows, [2]string{"Device", strings.TrimSpace(m.Device + " " + m.Dtype)})
		}
	}
	rows = append(rows, [2]string{"Job", d.JobUID}, [2]string{"File", d.Path})
	out := rows[:0]
	for _, kv := range rows {
		if kv[1] != "" {
			out = append(out, kv)
		}
	}
	return out
}

func (v *detailView) showStar() {
	if v.d != nil && v.d.Starred {
		v.star.SetText("Unstar")
	} else {
		v.star.SetText("Star")
	}
}

func (v *detailView) useSettings() {
	if v.d != nil {
		v.g.s.useSettings(v.d.Request)
	}
}

// useAsInit loads the image's settings, then makes the image itself the init
// image: "send to img2img".
func (v *detailView) useAsInit() {
	if v.d != nil {
		v.g.s.useSettings(v.d.Request)
		v.g.s.useAsInit(v.d.Path, v.d.Width, v.d.Height)
	}
}

func (v *detailView) openFolder() {
	if v.d == nil {
		return
	}
	u := &url.URL{Scheme: "file", Path: filepath.Dir(v.d.Path)}
	if err := v.g.s.app.OpenURL(u); err != nil {
		v.g.s.status.set(statusError, "Could not open the folder: "+err.Error(), "")
	}
}

func (v *detailView) toggleStar() {
	if v.d == nil {
		return
	}
	on := !v.d.Starred
	if err := v.g.store().SetStarred(context.Background(), v.d.ID, on); err != nil {
		v.g.s.status.set(statusError, "Could not star the image: "+err.Error(), "")
		return
	}
	v.d.Starred = on
	v.showStar()
	v.g.updateRecord(v.d.ID, func(r *store.ImageRecord) { r.Starred = on })
}

// askDelete asks before deleting: the row, the file and its thumbnail go.
func (v *detailView) askDelete() {
	if v.d == nil {
		return
	}
	v.ask = confirm(v.g.s.win, "Delete this image?",
		fmt.Sprintf("%s is removed from the history and from the disk.", filepath.Base(v.d.Path)), v.deleteNow)
	v.ask.SetConfirmText("Delete")
	v.ask.SetConfirmImportance(widget.DangerImportance)
}

func (v *detailView) deleteNow() {
	v.ask = nil
	if v.d == nil {
		return
	}
	g := v.g
	rec, err := g.store().DeleteImage(context.Background(), v.d.ID)
	if err != nil {
		g.s.status.set(statusError, "Could not delete the image: "+err.Error(), "")
		return
	}
	g.thumbs.forget(rec.Path)
	msg := "Deleted " + filepath.Base(rec.Path) + "."
	if err := media.DeleteImageFiles(rec.Path, g.s.x.svc.Thumbs); err != nil {
		g.s.status.set(statusWarn, msg+" The file could not be removed: "+err.Error(), "")
	} else {
		g.s.status.set(statusDone, msg, "")
	}
	v.d = nil
	delete(g.selected, rec.ID)
	g.closeDetail()
	g.apply()
	g.s.refreshHistory()
}

// updateRecord changes a record held in the loaded pages and redraws its tile.
func (g *galleryView) updateRecord(id int64, f func(*store.ImageRecord)) {
	for _, recs := range g.pages {
		for i := range recs {
			if recs[i].ID == id {
				f(&recs[i])
				if t := g.tiles[recs[i].Path]; t != nil {
					t.rec = recs[i]
					img, loaded := g.thumbs.get(t.rec.Path)
					t.show(img, loaded, t.rec.Starred, g.selected[id])
				}
			}
		}
	}
}

// shownFields are the request fields detailRows shows by name.
var shownFields = map[string]bool{"prompt": true, "negative_prompt": true, "model": true, "scheduler": true,
	"steps": true, "cfg": true, "width": true, "height": true, "seed": true, "output_dir": true, "preview_every": true}

// extraRequestFields lists the request's other set fields by JSON name, in
// name order, values as compact JSON.
func extraRequestFields(r request.Request) [][2]string {
	b, err := json.Marshal(r)
	if err != nil {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if !shownFields[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out [][2]string
	for _, k := range keys {
		v := strings.Trim(string(m[k]), `"`)
		if v == "" || v == "null" || v == "0" || v == "[]" || v == "{}" || v == "false" {
			continue
		}
		out = append(out, [2]string{sentence(strings.ReplaceAll(k, "_", " ")), v})
	}
	return out
}
