package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/repd/repd/faultnet"
)

// controlHandler serves the HTTP control described in the usage text.
func controlHandler(p *faultnet.Proxy, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	act := func(path string, f func()) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			f()
			log.Info("linkproxy control", "action", path)
			fmt.Fprintln(w, "ok")
		})
	}
	act("/partition", func() { p.Partition(true) })
	act("/heal", func() { p.Partition(false) })
	act("/stall", func() { p.Stall(true) })
	act("/unstall", func() { p.Stall(false) })
	act("/cut", p.CutAll)
	mux.HandleFunc("/link", func(w http.ResponseWriter, r *http.Request) {
		up, down := p.Links()
		q := r.URL.Query()
		dir := q.Get("dir")
		q.Del("dir")
		if len(q) > 0 {
			var links []*faultnet.Link
			switch dir {
			case "up":
				links = []*faultnet.Link{&up}
			case "down":
				links = []*faultnet.Link{&down}
			case "both", "":
				links = []*faultnet.Link{&up, &down}
			default:
				http.Error(w, "dir must be up, down or both", http.StatusBadRequest)
				return
			}
			for _, l := range links {
				if err := applyQuery(l, q); err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
			}
			p.SetLink(up, down)
			log.Info("linkproxy control", "up", formatLink(up), "down", formatLink(down))
		}
		fmt.Fprintf(w, "up: %s\ndown: %s\n", formatLink(up), formatLink(down))
	})
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(struct {
			faultnet.Stats
			Partitioned, Stalled bool
		}{p.Stats(), p.Partitioned(), p.Stalled()})
	})
	return mux
}

// applySpec applies a list like "delay=5ms,bandwidth=10MiB" to l.
func applySpec(l *faultnet.Link, spec string) error {
	q := url.Values{}
	for kv := range strings.SplitSeq(spec, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("%q: want key=value", kv)
		}
		q.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	return applyQuery(l, q)
}

// applyQuery sets the fields of l named in q.
func applyQuery(l *faultnet.Link, q url.Values) error {
	n := *l
	for k := range q {
		v := q.Get(k)
		var err error
		switch k {
		case "delay":
			n.Delay, err = time.ParseDuration(v)
		case "jitter":
			n.Jitter, err = time.ParseDuration(v)
		case "bandwidth":
			n.Bandwidth, err = parseSize(v)
		case "corrupt":
			n.CorruptProb, err = strconv.ParseFloat(v, 64)
		case "loss":
			n.LossProb, err = strconv.ParseFloat(v, 64)
		case "loss-penalty":
			n.LossPenalty, err = time.ParseDuration(v)
		default:
			return fmt.Errorf("unknown key %q (want delay, jitter, bandwidth, corrupt, loss, loss-penalty)", k)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	if err := checkLink(n); err != nil {
		return err
	}
	*l = n
	return nil
}

func checkLink(l faultnet.Link) error {
	switch {
	case l.Delay < 0 || l.Jitter < 0 || l.LossPenalty < 0:
		return fmt.Errorf("negative duration")
	case l.Bandwidth < 0:
		return fmt.Errorf("negative bandwidth")
	case l.CorruptProb < 0 || l.CorruptProb > 1 || l.LossProb < 0 || l.LossProb > 1:
		return fmt.Errorf("probabilities must be in [0, 1]")
	}
	return nil
}

func formatLink(l faultnet.Link) string {
	bw := "unlimited"
	if l.Bandwidth > 0 {
		bw = strconv.FormatInt(l.Bandwidth, 10) + "B/s"
	}
	return fmt.Sprintf("delay=%v,jitter=%v,bandwidth=%s,corrupt=%g,loss=%g,loss-penalty=%v",
		l.Delay, l.Jitter, bw, l.CorruptProb, l.LossProb, l.LossPenalty)
}

// parseSize parses a byte rate such as "100MiB", "1.5GB/s" or "800Mbit".
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/s")
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	var mult float64
	switch unit {
	case "", "b":
		mult = 1
	case "k", "kib":
		mult = 1 << 10
	case "m", "mib":
		mult = 1 << 20
	case "g", "gib":
		mult = 1 << 30
	case "kb":
		mult = 1e3
	case "mb":
		mult = 1e6
	case "gb":
		mult = 1e9
	case "kbit":
		mult = 1e3 / 8
	case "mbit":
		mult = 1e6 / 8
	case "gbit":
		mult = 1e9 / 8
	default:
		return 0, fmt.Errorf("bad size %q: unknown unit %q", s, unit)
	}
	return int64(f * mult), nil
}
