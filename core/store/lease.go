package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// LeaseExpiry is how long a lease whose holder cannot be probed (another
// host's, or one recorded without a start time where pids are reused) stays
// valid without a renewal. A holder that can be probed keeps its lease for as
// long as it lives, renewed or not.
const LeaseExpiry = 2 * time.Minute

// ErrLeaseLost is returned (wrapped) by RenewLease when this process does not
// hold the lease any more.
var ErrLeaseLost = errors.New("this process does not hold the device's lease")

// Lease is a row of device_leases: the process that holds a device's worker.
type Lease struct {
	Device string `json:"device"`
	PID    int    `json:"pid"`
	Start  int64  `json:"start"`
	Host   string `json:"host"`
	// Command is how the holder was started ("atelier queue run --watch"),
	// "" when unknown.
	Command    string    `json:"command,omitempty"`
	AcquiredAt time.Time `json:"acquired_at"`
	RenewedAt  time.Time `json:"renewed_at"`
	// Mine is true when this process holds it.
	Mine bool `json:"mine"`
}

// thisHost names the machine in lease rows; a lease of another host cannot
// be probed, only expire.
func thisHost() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}

// leaseLive reports whether l's holder still holds it: a live process (same
// pid and start time) of this host, or, where that cannot be told, a lease
// renewed within LeaseExpiry.
func leaseLive(l Lease, now time.Time) bool {
	_, selfStart := selfProcess()
	// Our own start time reads where start times can be read at all.
	if l.Host != thisHost() || selfStart == 0 || l.Start == 0 {
		if now.Sub(l.RenewedAt) > LeaseExpiry {
			return false
		}
		if l.Host != thisHost() {
			return true
		}
	}
	return processAlive(l.PID, l.Start)
}

// AcquireLease takes device's lease for this process when it is free, held by
// this process already (then it is renewed), or held by a process that is
// gone. It reports whether this process holds it now, and the lease as it
// stands (the other holder's when held is false). A takeover marks the dead
// holder's running jobs interrupted at once, so that they can run again.
func (s *Store) AcquireLease(ctx context.Context, device string) (held bool, lease Lease, err error) {
	if device == "" {
		return false, Lease{}, errors.New("acquire a device lease: no device named")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, Lease{}, fmt.Errorf("acquire the lease of %s: %w", device, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	cur, found, err := readLease(ctx, tx, device)
	if err != nil {
		return false, Lease{}, fmt.Errorf("acquire the lease of %s: %w", device, err)
	}
	now := time.Now()
	if found && !cur.Mine && leaseLive(cur, now) {
		return false, cur, nil
	}
	pid, start := selfProcess()
	host := thisHost()
	at := formatTime(now)
	acquired := at
	if found && cur.Mine {
		acquired = formatTime(cur.AcquiredAt)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO device_leases (device, holder_pid, holder_start, host, acquired_at, renewed_at, command)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET holder_pid = excluded.holder_pid,
		holder_start = excluded.holder_start, host = excluded.host, acquired_at = excluded.acquired_at,
		renewed_at = excluded.renewed_at, command = excluded.command`, device, pid, start, host, acquired, at, selfCommand()); err != nil {
		return false, Lease{}, fmt.Errorf("acquire the lease of %s: %w", device, err)
	}
	if err := tx.Commit(); err != nil {
		return false, Lease{}, fmt.Errorf("acquire the lease of %s: commit: %w", device, err)
	}
	took := found && !cur.Mine
	mine, _ := parseTime(acquired)
	lease = Lease{Device: device, PID: pid, Start: start, Host: host, Command: selfCommand(), AcquiredAt: mine,
		RenewedAt: now.UTC().Truncate(time.Millisecond), Mine: true}
	if took {
		if _, err := s.MarkInterrupted(ctx); err != nil {
			return true, lease, fmt.Errorf("take over the lease of %s: %w", device, err)
		}
	}
	return true, lease, nil
}

// RenewLease records that this process still holds device's lease; the error
// wraps ErrLeaseLost when it does not.
func (s *Store) RenewLease(ctx context.Context, device string) error {
	pid, start := selfProcess()
	res, err := s.db.ExecContext(ctx, `UPDATE device_leases SET renewed_at = ?
		WHERE device = ? AND holder_pid = ? AND holder_start = ? AND host = ?`,
		formatTime(time.Now()), device, pid, start, thisHost())
	if err := requireOneRow(res, err); err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("renew the lease of %s: %w", device, ErrLeaseLost)
		}
		return fmt.Errorf("renew the lease of %s: %w", device, err)
	}
	return nil
}

// ReleaseLease gives device's lease up if this process holds it; releasing a
// lease held by another process (or by none) does nothing.
func (s *Store) ReleaseLease(ctx context.Context, device string) error {
	pid, start := selfProcess()
	if _, err := s.db.ExecContext(ctx, `DELETE FROM device_leases
		WHERE device = ? AND holder_pid = ? AND holder_start = ? AND host = ?`, device, pid, start, thisHost()); err != nil {
		return fmt.Errorf("release the lease of %s: %w", device, err)
	}
	return nil
}

// DeviceLease returns device's lease as recorded, and whether there is one
// whose holder is alive.
func (s *Store) DeviceLease(ctx context.Context, device string) (Lease, bool, error) {
	l, found, err := readLease(ctx, s.db, device)
	if err != nil {
		return Lease{}, false, fmt.Errorf("read the lease of %s: %w", device, err)
	}
	return l, found && (l.Mine || leaseLive(l, time.Now())), nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func readLease(ctx context.Context, q querier, device string) (Lease, bool, error) {
	var l Lease
	var acquired, renewed string
	err := q.QueryRowContext(ctx, `SELECT `+leaseColumns+` FROM device_leases WHERE device = ?`, device).
		Scan(&l.Device, &l.PID, &l.Start, &l.Host, &acquired, &renewed, &l.Command)
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, err
	}
	return finishLease(l, acquired, renewed)
}

const leaseColumns = `device, holder_pid, holder_start, host, acquired_at, renewed_at, command`

func finishLease(l Lease, acquired, renewed string) (Lease, bool, error) {
	var err error
	if l.AcquiredAt, err = parseTime(acquired); err != nil {
		return Lease{}, false, err
	}
	if l.RenewedAt, err = parseTime(renewed); err != nil {
		return Lease{}, false, err
	}
	pid, start := selfProcess()
	l.Mine = l.PID == pid && l.Start == start && l.Host == thisHost()
	return l, true, nil
}

// Leases lists the device leases whose holders are alive, by device.
func (s *Store) Leases(ctx context.Context) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+leaseColumns+` FROM device_leases ORDER BY device`)
	if err != nil {
		return nil, fmt.Errorf("list the device leases: %w", err)
	}
	defer rows.Close()
	var out []Lease
	now := time.Now()
	for rows.Next() {
		var l Lease
		var acquired, renewed string
		if err := rows.Scan(&l.Device, &l.PID, &l.Start, &l.Host, &acquired, &renewed, &l.Command); err != nil {
			return nil, fmt.Errorf("list the device leases: %w", err)
		}
		if l, _, err = finishLease(l, acquired, renewed); err != nil {
			return nil, fmt.Errorf("list the device leases: %w", err)
		}
		if l.Mine || leaseLive(l, now) {
			out = append(out, l)
		}
	}
	return out, rows.Err()
}

// Holder names a lease's holder for a message: "pid 4242, atelier queue run
// --watch", or "pid 4242" when its command is unknown.
func (l Lease) Holder() string {
	who := fmt.Sprintf("pid %d", l.PID)
	if l.Command != "" {
		who += ", " + l.Command
	}
	if l.Host != "" && l.Host != thisHost() {
		who += ", on " + l.Host
	}
	return who
}

// selfCommand is how this process was started, as a lease names it: the
// program's name and its arguments, cut to a line.
func selfCommand() string {
	if len(os.Args) == 0 {
		return ""
	}
	args := append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...)
	cmd := strings.Join(args, " ")
	if len(cmd) > 120 {
		cmd = cmd[:117] + "..."
	}
	return cmd
}

// ReleaseMyLeases gives up every lease this process holds; a process calls it
// at exit, once its workers have stopped, so that a waiting one takes over.
func (s *Store) ReleaseMyLeases(ctx context.Context) error {
	pid, start := selfProcess()
	if _, err := s.db.ExecContext(ctx, `DELETE FROM device_leases WHERE holder_pid = ? AND holder_start = ? AND host = ?`,
		pid, start, thisHost()); err != nil {
		return fmt.Errorf("release this process's device leases: %w", err)
	}
	return nil
}
