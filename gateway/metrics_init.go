package gateway

import (
	"strconv"

	"github.com/longlink/longlink/codec"
)

// Label values known up front, for initSeries. A new one goes here as well
// as where it is counted (TestFreshMetricsAtZero lists what must be there).
var (
	closeCodes = []codec.Code{codec.CodeProtocol, codec.CodeAuthTimeout, codec.CodeStale, codec.CodeSlowConsumer,
		codec.CodeShutdown, codec.CodeFrameTooBig, codec.CodeFlood, codec.CodeServerBusy, codec.CodeNotAuthed,
		codec.CodeAuthTwice, codec.CodeFrameTooSlow, codec.CodeBadRecord, codec.CodeBadHandshake, codec.CodeRekey,
		codec.CodeBadToken, codec.CodeTokenExpired, codec.CodeBadVersion, codec.CodeReplaced, codec.CodeBadAuth,
		codec.CodeEncRequired, codec.CodeUnknownKey}
	authResults   = []string{"ok", "malformed", "expired", "invalid", "device_mismatch"}
	shedReasons   = []string{"conn_inflight", "queue_full", "expired_in_queue", "queue_wait", "retry_budget", "presence_dropped"}
	evictReasons  = []string{"stale", "auth_timeout"}
	refuseReasons = []string{"accept_limit", "flapping", "proxy_protocol"}
	wsResults     = []string{"ok", "rejected"}
	httpStatuses  = []int{200, 400, 401, 404, 413, 422, 429, 503, 504}
)

// maxDefaultPriority is the business priority of methods not listed in
// DefaultPriorities (the least important of the defaults).
const maxDefaultPriority = 4

// initSeries creates, at 0, every labelled series whose label values are
// known before traffic: a fresh gateway's /metrics then has them, so
// dashboards show 0 instead of "No data" and rate() has a start point.
// Per-method series (calls by method) appear with their first call.
func (m *metrics) initSeries() {
	m.closes.WithLabelValues("client")
	m.closes.WithLabelValues("io_error")
	for _, c := range closeCodes {
		m.closes.WithLabelValues(c.String())
	}
	for _, r := range authResults {
		m.auths.WithLabelValues(r)
	}
	for _, r := range shedReasons {
		m.shed.WithLabelValues(r)
	}
	for _, r := range evictReasons {
		m.evictions.WithLabelValues(r)
	}
	for _, r := range refuseReasons {
		m.connRefused.WithLabelValues(r)
	}
	for _, r := range wsResults {
		m.wsUpgrades.WithLabelValues(r)
	}
	for _, st := range httpStatuses {
		m.httpCalls.WithLabelValues(strconv.Itoa(st))
	}
	for p := range maxDefaultPriority + 1 { // the default priorities: 0 (most important) to 4
		m.admShed.WithLabelValues(strconv.Itoa(p))
	}
}
