package bridge

import "time"

// backoffDelay is the wait before the next start after `failures` failures in a row:
// min·2^(failures-1), capped at max, of which the upper half is random (jitter), so
// that a worker that crashes at once is not restarted in a tight loop. rnd(n) returns
// a number in [0, n).
func backoffDelay(failures int, min, max time.Duration, rnd func(n int64) int64) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := min
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	half := d / 2
	return half + time.Duration(rnd(int64(d-half)+1))
}
