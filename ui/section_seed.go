package ui

import (
	"math/rand/v2"
	"strconv"
	"strings"

	"atelier/core/request"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"
)

// seedSection is the seed, with a random one a click away.
type seedSection struct {
	fields  *formFields
	seed    *submitEntry
	dice    *tipButton
	anySeed *widget.Button
}

func newSeedSection(ff *formFields) *seedSection {
	s := &seedSection{fields: ff}
	s.seed = ff.entry(fSeed, false)
	s.seed.SetPlaceHolder("-1 = random")
	s.dice = newTipButton(diceIcon, "A new random seed", func() { s.seed.SetText(strconv.FormatInt(randomSeed(), 10)) })
	s.anySeed = widget.NewButton("Any", func() { s.seed.SetText("-1") })
	return s
}

func (s *seedSection) set(r request.Request) { s.seed.SetText(strconv.FormatInt(r.Seed, 10)) }

func (s *seedSection) read(r *request.Request, errs *[]*request.FieldError) {
	if strings.TrimSpace(s.seed.Text) == "" {
		r.Seed = -1 // an empty seed means "any", as the placeholder says
	} else {
		r.Seed = parsed{errs}.integer64(fSeed, s.seed.Text)
	}
}

func (s *seedSection) content() fyne.CanvasObject {
	return container.NewVBox(
		caption("Seed (-1 = random)"),
		container.NewBorder(nil, nil, nil, container.NewHBox(s.dice, s.anySeed), s.seed),
		s.fields.errs[fSeed])
}

func randomSeed() int64 { return rand.Int64N(request.MaxSeed + 1) }
