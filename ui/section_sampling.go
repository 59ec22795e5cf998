package ui

import (
	"slices"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"

	"atelier/core/protocol"
	"atelier/core/request"
)

// samplingSection is the sampler and its sigma schedule, offered as the
// worker's hello says (core's lists before a worker started).
type samplingSection struct {
	fields    *formFields
	scheduler *widget.Select
	schedule  *widget.Select
	caps      *protocol.Capabilities
}

func newSamplingSection(ff *formFields) *samplingSection {
	s := &samplingSection{fields: ff}
	s.scheduler = widget.NewSelect(schedulerLabels(request.Schedulers), func(string) {
		ff.clearError(fScheduler)
		s.updateSchedules()
		ff.edited()
	})
	s.schedule = widget.NewSelect(nil, func(string) { ff.clearError(fSchedule); ff.edited() })
	return s
}

func (s *samplingSection) owns(field string) bool { return field == fScheduler || field == fSchedule }

// setCapabilities offers the schedulers and schedules of a worker's hello.
func (s *samplingSection) setCapabilities(c *protocol.Capabilities) {
	s.caps = c
	scheds := request.Schedulers
	if c != nil && len(c.Schedulers) > 0 {
		scheds = c.Schedulers
	}
	sel := s.scheduler.Selected
	s.scheduler.SetOptions(schedulerLabels(scheds))
	if sel != "" {
		s.scheduler.SetSelected(sel) // kept even if this worker lacks it: validation says so
	}
}

// updateSchedules offers the schedules the chosen scheduler takes.
func (s *samplingSection) updateSchedules() {
	opts := []string{request.ScheduleNames[""]}
	allowed := request.Schedules[1:]
	if s.caps != nil && s.caps.Schedules != nil {
		allowed = s.caps.Schedules[schedulerID(s.scheduler.Selected)]
	}
	for _, sc := range allowed {
		opts = append(opts, request.ScheduleNames[sc])
	}
	cur := s.schedule.Selected
	s.schedule.SetOptions(opts)
	if cur == "" || !slices.Contains(opts, cur) {
		cur = opts[0]
	}
	s.schedule.SetSelected(cur)
}

// setScheduler shows a request's scheduler; the schedule follows in set.
func (s *samplingSection) setScheduler(r request.Request) {
	sched := r.Scheduler
	if sched == "" {
		sched = request.Schedulers[0]
	}
	s.scheduler.SetSelected(schedulerLabel(sched))
}

func (s *samplingSection) set(r request.Request) {
	name := request.ScheduleNames[r.Schedule]
	if name == "" {
		name = r.Schedule
	}
	s.updateSchedules()
	s.schedule.SetSelected(name)
}

func (s *samplingSection) read(r *request.Request, _ *[]*request.FieldError) {
	r.Scheduler = schedulerID(s.scheduler.Selected)
	r.Schedule = scheduleID(s.schedule.Selected)
}

func (s *samplingSection) content() fyne.CanvasObject {
	errs := s.fields.errs
	return container.NewVBox(
		container.NewGridWithColumns(2,
			container.NewVBox(caption(title(fScheduler)), s.scheduler),
			container.NewVBox(caption(title(fSchedule)), s.schedule)),
		errs[fScheduler], errs[fSchedule])
}

// schedulerLabel is the name the sampler drop-down shows for a scheduler id:
// A1111's ("DPM++ 2M"), or the id itself for one core does not name.
func schedulerLabel(id string) string {
	if n, ok := request.SamplerNames[id]; ok {
		return n
	}
	return id
}

func schedulerLabels(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = schedulerLabel(id)
	}
	return out
}

// schedulerID is the request's scheduler id for a label of the drop-down.
func schedulerID(label string) string {
	for id, n := range request.SamplerNames {
		if n == label {
			return id
		}
	}
	return label
}

func scheduleID(name string) string {
	for id, n := range request.ScheduleNames {
		if n == name {
			return id
		}
	}
	return name
}
