package ui

import (
	"container/list"
	"image"
	"sync"

	"atelier/core/media"
)

// thumbLoader decodes thumbnails on two background goroutines, newest
// request first (the tiles just scrolled to), and keeps the last few hundred
// in memory. A nil image records a file that could not be read.
type thumbLoader struct {
	th    *media.Thumbnailer
	limit int
	ready func(path string)

	mu      sync.Mutex
	cache   map[string]*list.Element // of thumbEntry
	lru     *list.List
	queue   []string
	queued  map[string]bool
	wake    chan struct{}
	started bool
	closed  bool
	working sync.WaitGroup
}

type thumbEntry struct {
	path string
	img  image.Image
}

func newThumbLoader(th *media.Thumbnailer, limit int, ready func(string)) *thumbLoader {
	return &thumbLoader{th: th, limit: limit, ready: ready, cache: map[string]*list.Element{}, lru: list.New(),
		queued: map[string]bool{}, wake: make(chan struct{}, 1)}
}

func (l *thumbLoader) get(path string) (image.Image, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.cache[path]; ok {
		l.lru.MoveToFront(e)
		return e.Value.(*thumbEntry).img, true
	}
	return nil, false
}

// forget drops a path (its file was deleted).
func (l *thumbLoader) forget(path string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.cache[path]; ok {
		l.lru.Remove(e)
		delete(l.cache, path)
	}
}

func (l *thumbLoader) request(path string) {
	l.mu.Lock()
	if l.queued[path] {
		l.mu.Unlock()
		return
	}
	l.queued[path] = true
	l.queue = append(l.queue, path)
	// Tiles scrolled past long ago are not worth decoding any more.
	if over := len(l.queue) - 4*galleryPage; over > 0 {
		for _, p := range l.queue[:over] {
			delete(l.queued, p)
		}
		l.queue = l.queue[over:]
	}
	if !l.started && !l.closed {
		l.started = true
		for range 2 {
			l.working.Add(1)
			go l.work()
		}
	}
	if !l.closed {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	l.mu.Unlock()
}

func (l *thumbLoader) next() (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) == 0 || l.closed {
		return "", false
	}
	p := l.queue[len(l.queue)-1]
	l.queue = l.queue[:len(l.queue)-1]
	return p, true
}

func (l *thumbLoader) work() {
	defer l.working.Done()
	for {
		p, ok := l.next()
		if !ok {
			if _, open := <-l.wake; !open {
				return
			}
			continue
		}
		img, err := l.th.Load(p)
		if err != nil {
			img = nil
		}
		l.mu.Lock()
		delete(l.queued, p)
		if e, ok := l.cache[p]; ok {
			e.Value.(*thumbEntry).img = img
		} else {
			l.cache[p] = l.lru.PushFront(&thumbEntry{path: p, img: img})
		}
		for l.lru.Len() > l.limit {
			old := l.lru.Back()
			l.lru.Remove(old)
			delete(l.cache, old.Value.(*thumbEntry).path)
		}
		l.mu.Unlock()
		l.ready(p)
	}
}
