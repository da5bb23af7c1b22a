// Package ctxtime has the one sleep that ends early with its context,
// shared by the engine, the backup code and the test harnesses.
package ctxtime

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx ends, whichever comes first; ctx's error if
// it ended. A d of zero or less returns at once (nil unless ctx ended).
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
