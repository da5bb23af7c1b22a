package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
	"github.com/urfave/cli/v2"
)

const unitDir = "../../scripts/systemd"

// unitFile is a systemd unit as far as these tests read one: the
// assignments of each section, in order.
type unitFile map[string][][2]string

func readUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	cont := ""
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line, cont = cont+" "+line, ""
		}
		if strings.HasSuffix(line, `\`) {
			cont = strings.TrimSuffix(line, `\`)
			continue
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not an assignment: %q", path, line)
			}
			u[section] = append(u[section], [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
		}
	}
	return u
}

// get returns the last value of key in section ("" if unset).
func (u unitFile) get(section, key string) string {
	v := ""
	for _, kv := range u[section] {
		if kv[0] == key {
			v = kv[1]
		}
	}
	return v
}

// readEnvFile reads an EnvironmentFile: KEY=VALUE lines, comments.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not KEY=VALUE: %q", path, line)
		}
		env[k] = strings.Trim(v, `"`)
	}
	return env
}

// execArgs expands an ExecStart= line as systemd does (systemd.service(5),
// "Command lines"): specifiers %i and %%, "${VAR}" as one word, "$VAR"
// split at white space (no words when empty).
func execArgs(t *testing.T, line, instance string, env map[string]string) []string {
	t.Helper()
	line = strings.NewReplacer("%i", instance, "%I", instance, "%%", "%").Replace(line)
	var out []string
	for _, w := range strings.Fields(line) {
		switch {
		case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
			out = append(out, env[w[2:len(w)-1]])
		case strings.HasPrefix(w, "$"):
			out = append(out, strings.Fields(env[w[1:]])...)
		case strings.ContainsAny(w, `$"'`):
			t.Fatalf("ExecStart word %q: this test expands only whole-word variables; keep the unit that simple", w)
		default:
			out = append(out, w)
		}
	}
	return out
}

// unitEnv is the service's environment: its Environment= defaults (%i
// expanded), then the environment file's assignments.
func unitEnv(t *testing.T, u unitFile, instance string, file map[string]string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, kv := range u["Service"] {
		if kv[0] != "Environment" {
			continue
		}
		k, v, ok := strings.Cut(strings.ReplaceAll(kv[1], "%i", instance), "=")
		if !ok {
			t.Fatalf("Environment=%s: not KEY=VALUE", kv[1])
		}
		env[k] = v
	}
	for k, v := range file {
		env[k] = v
	}
	return env
}

// parseBackupLine runs repctl's own flag parsing and backup's option checks
// on args (without argv[0]) and returns the options and the global flags.
func parseBackupLine(t *testing.T, args []string) (backupOpts, map[string]string, error) {
	t.Helper()
	app := newApp()
	var (
		got    backupOpts
		global = map[string]string{}
		ran    bool
	)
	for _, cmd := range app.Commands {
		if cmd.Name == "backup" {
			cmd.Action = func(c *cli.Context) error {
				ran = true
				for _, g := range []string{"config", "node", "admin"} {
					global[g] = globalString(c, g)
				}
				var err error
				got, err = backupOptions(c)
				return err
			}
		}
	}
	err := app.RunContext(context.Background(), append([]string{"repctl"}, args...))
	if err == nil && !ran {
		t.Fatalf("repctl %s: the backup verb did not run", strings.Join(args, " "))
	}
	return got, global, err
}

// repd-backup@.service runs a repctl backup that repctl accepts: its
// ExecStart, expanded with the unit's defaults and with the example
// environment file, parses as the backup verb with the options meant; the
// timer runs it hourly, persistently, spread out.
func TestBackupUnit(t *testing.T) {
	svc := readUnit(t, filepath.Join(unitDir, "repd-backup@.service"))
	if got := svc.get("Service", "Type"); got != "oneshot" {
		t.Errorf("Type=%s, want oneshot", got)
	}
	if svc.get("Service", "IOSchedulingClass") != "idle" || svc.get("Service", "Nice") == "" {
		t.Errorf("the backup is not niced to idle I/O: Nice=%q IOSchedulingClass=%q", svc.get("Service", "Nice"), svc.get("Service", "IOSchedulingClass"))
	}
	if got := svc.get("Service", "EnvironmentFile"); got != "-/etc/repd/backup-%i.env" {
		t.Errorf("EnvironmentFile=%s", got)
	}
	exec := svc.get("Service", "ExecStart")
	for _, c := range []struct {
		name              string
		file              map[string]string
		dir, config, node string
		keep              int
		metricsFile       string
	}{
		{name: "defaults (no environment file)", dir: "/var/backups/repd/r0", config: "/etc/repd/r0.toml", keep: 48},
		{name: "backup.env.example", file: readEnvFile(t, filepath.Join(unitDir, "backup.env.example")),
			dir: "/var/backups/repd/r0", config: "/etc/repd/r0.toml", keep: 48, metricsFile: "/var/lib/prometheus/node-exporter/repd-backup-r0.prom"},
		{name: "everything set", file: map[string]string{"REPD_CONFIG": "/srv/r0.toml", "BACKUP_DIR": "/backup/r0", "BACKUP_KEEP": "7",
			"BACKUP_OPTS": "--full  --metrics-file /tmp/x.prom --verbose"},
			dir: "/backup/r0", config: "/srv/r0.toml", keep: 7, metricsFile: "/tmp/x.prom"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := execArgs(t, exec, "r0", unitEnv(t, svc, "r0", c.file))
			if len(args) == 0 || args[0] != "/usr/local/bin/repctl" {
				t.Fatalf("ExecStart runs %v, want /usr/local/bin/repctl (where scripts/systemd/README.md installs it)", args)
			}
			o, global, err := parseBackupLine(t, args[1:])
			if err != nil {
				t.Fatalf("repctl %s: %v", strings.Join(args[1:], " "), err)
			}
			if o.dir != c.dir || o.keep != c.keep || o.metricsFile != c.metricsFile || global["config"] != c.config {
				t.Errorf("repctl %s: dir %q keep %d metrics-file %q config %q", strings.Join(args[1:], " "), o.dir, o.keep, o.metricsFile, global["config"])
			}
		})
	}
	// What an operator may get wrong in the file is refused by repctl's
	// parsing, so the unit fails visibly.
	for _, bad := range []map[string]string{{"BACKUP_KEEP": "many"}, {"BACKUP_KEEP": "-1"}, {"BACKUP_OPTS": "--metrics-file /tmp/x.txt"}, {"BACKUP_OPTS": "--bogus"}} {
		args := execArgs(t, exec, "r0", unitEnv(t, svc, "r0", bad))
		if _, _, err := parseBackupLine(t, args[1:]); err == nil || exitCode(err) != exitUsage {
			t.Errorf("%v: %v, want a usage error", bad, err)
		}
	}

	tm := readUnit(t, filepath.Join(unitDir, "repd-backup@.timer"))
	for k, want := range map[string]string{"OnCalendar": "hourly", "Persistent": "true"} {
		if got := tm.get("Timer", k); got != want {
			t.Errorf("timer %s=%s, want %s", k, got, want)
		}
	}
	if tm.get("Timer", "RandomizedDelaySec") == "" || tm.get("Install", "WantedBy") != "timers.target" {
		t.Errorf("timer: RandomizedDelaySec=%q WantedBy=%q", tm.get("Timer", "RandomizedDelaySec"), tm.get("Install", "WantedBy"))
	}
}

// systemd itself accepts the units: systemd-analyze verify, with the
// ExecStart binary pointed at an executable that exists here. Any warning
// (an unknown key, a bad value) fails the test.
func TestBackupUnitVerify(t *testing.T) {
	sa := testtool.Require(t, "systemd-analyze")
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"repd-backup@.service", "repd-backup@.timer", "repd@.service"} {
		b, err := os.ReadFile(filepath.Join(unitDir, name))
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.NewReplacer("/usr/local/bin/repctl", self, "/usr/local/bin/repd", self).Replace(string(b)))
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sa, "verify", "--man=no", filepath.Join(dir, "repd-backup@r0.service"), filepath.Join(dir, "repd-backup@r0.timer"))
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
