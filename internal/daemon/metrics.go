package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the daemon's Prometheus series, on a registry of its own so that tests
// and several daemons in one process do not collide.
type metrics struct {
	reg *prometheus.Registry

	lastSuccess  *prometheus.GaugeVec     // policy, kind, guest
	jobDuration  *prometheus.HistogramVec // policy, kind
	failures     *prometheus.CounterVec   // policy, guest
	snapshots    *prometheus.GaugeVec     // guest, label
	freeze       *prometheus.HistogramVec // policy
	backupBytes  *prometheus.CounterVec   // policy, guest
	jobsTotal    *prometheus.CounterVec   // policy, kind, outcome
	reloadErrors prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "autosnap_last_success_timestamp_seconds",
			Help: "Unix time of the last successful snapshot or backup of a guest by a policy.",
		}, []string{"policy", "kind", "guest"}),
		jobDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "autosnap_job_duration_seconds",
			Help:    "Wall time of one scheduled job (all guests of a policy).",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400},
		}, []string{"policy", "kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "autosnap_guest_failures_total",
			Help: "Failed guest runs (snapshot or backup) by policy and guest.",
		}, []string{"policy", "guest"}),
		snapshots: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "autosnap_snapshots",
			Help: "autosnap snapshots of a guest with a label, as counted after the guest's last scheduled run.",
		}, []string{"guest", "label"}),
		freeze: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "autosnap_freeze_seconds",
			Help:    "How long guest filesystems were frozen for one snapshot.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30},
		}, []string{"policy"}),
		backupBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "autosnap_backup_bytes_total",
			Help: "Bytes written by scheduled backups.",
		}, []string{"policy", "guest"}),
		jobsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "autosnap_jobs_total",
			Help: "Scheduled jobs run, by outcome.",
		}, []string{"policy", "kind", "outcome"}),
		reloadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "autosnap_config_reload_errors_total",
			Help: "Reloads refused because the new policy file was invalid (the old one kept running).",
		}),
	}
	m.reg.MustRegister(m.lastSuccess, m.jobDuration, m.failures, m.snapshots, m.freeze, m.backupBytes,
		m.jobsTotal, m.reloadErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
