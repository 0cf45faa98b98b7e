package gateway

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/longlink/longlink/admission"
	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/heartbeat"
	"github.com/longlink/longlink/secure"
)

// Config configures a Server. Zero fields take the defaults noted.
type Config struct {
	Listen string // host:port for client TCP connections (default ":7100")
	Node   string // this worker's node id (default hostname:port)

	Keys    *auth.KeySet    // required: token keys
	Backend backend.Backend // default: backend.NewEmbedded()
	Logger  *slog.Logger    // default: slog.Default()

	Loops     int  // event loops (default half the CPUs, at least 1)
	ReusePort bool // SO_REUSEPORT, for several worker processes on one port

	MaxBody     int           // largest accepted body (default 64 KiB)
	AuthTimeout time.Duration // AUTH must arrive within this (default 10s)
	// A started frame must make progress: within each FrameTimeout window
	// (default 30s) it must complete or receive MinFrameRate bytes per second
	// of the window (default 256, so 7,680 bytes per 30s), or the
	// connection is closed with 3013 frame_too_slow.
	FrameTimeout time.Duration
	MinFrameRate int
	// CloseLinger: how long a connection the server closes may take to
	// flush what is queued to it (the closing ERROR last) before it is cut
	// (default 10s).
	CloseLinger time.Duration
	WheelTick   time.Duration // deadline resolution (default 1s)

	// Heartbeat policy per network, advised to clients in AUTH_OK and
	// enforced as idle timeouts; changeable at runtime (SetHeartbeatPolicies).
	// Default heartbeat.DefaultPolicies(), unless HeartbeatInterval is set:
	// then every network gets that fixed interval and IdleTimeout.
	Policies          *heartbeat.Policies
	HeartbeatInterval time.Duration
	IdleTimeout       time.Duration // with HeartbeatInterval; default 2*interval + 60s

	MaxFrameRate  int           // frames per second per connection before "flood" (default 200)
	MaxInflight   int           // calls in flight per connection (default 32)
	MaxOutbound   int           // bytes queued to one connection before "slow consumer" (default 1 MiB)
	PoolSize      int           // forwarding goroutines (default 256)
	CallYield     bool          // submit yields to the forwarding goroutine it woke, so a call starts at once (forward.go); off by default: it costs a thread wake-up per call
	QueueSize     int           // calls waiting for a goroutine (default 16384)
	CallTimeout   time.Duration // default per-call deadline (default 5s)
	SystemRetries int           // retries of system failures per call (default 1)

	DrainWindow time.Duration // spread GOAWAYs over this on shutdown (default 10s)

	// AdminToken protects the admin switch endpoints (/switches,
	// /heartbeat/, /shake/, /workers/); empty refuses them all.
	AdminToken string
	// SwitchesFile persists the operator's switches ("" = not persisted).
	SwitchesFile string

	Admission     AdmissionConfig     // overload control on the forwarding pools (package admission)
	ConnAdmission ConnAdmissionConfig // accept rate, connection cap, flapping

	// Push (push/, gateway/push.go): NATS URLs (comma-separated) this worker
	// takes notifies from; empty disables push. Notifies for the same user
	// and type within PushWindow are merged (default 20ms).
	NATS       string
	PushWindow time.Duration
	// PushLost: a connection that closes with pushes it may not have
	// received reports them to the router (the offline path; push_lost.go).
	PushLost bool
	// NATSOptions go to the worker's NATS connection: its credentials
	// (push.ClientAuth.As(push.RoleGateway)) and TLS.
	NATSOptions []nats.Option
	// Ready, if set, is asked by /readyz beside the gateway's own state
	// (the push hub in this process: push.Hub.Ready).
	Ready func() error

	// Shake red packets (gateway/shake.go): nil answers SHAKE and OPEN with
	// "no event here".
	Shake *ShakeConfig

	// Transport encryption (gateway/secure.go): "required", "optional" or
	// "off"; default optional with ServerKeys, off without.
	Encryption string
	ServerKeys *secure.KeyRing
	// ServerKeysFile is where ServerKeys came from: POST /keys/reload on
	// the admin port (with the admin token) reloads it.
	ServerKeysFile string
	// HandshakeWorkers run the X25519 work of HELLO off the loops (default
	// GOMAXPROCS minus Loops, at least 1; -1: on the loop); at most
	// HandshakeQueue wait (default 1024), more are shed with 3007.
	HandshakeWorkers int
	HandshakeQueue   int
	// EphemeralStore is how many server ephemeral keys the handshake
	// workers keep pre-generated, process-wide (secure.SetEphemeralStore;
	// 0: secure.EphemeralStore, 1024). Worker processes take their share.
	EphemeralStore int

	// ProxyProtocolFrom lists the balancer networks whose connections must
	// start with a PROXY protocol v1 or v2 header naming the client
	// (gateway/proxyproto.go); from anywhere else a PROXY header is refused.
	// Empty: the PROXY protocol is off.
	ProxyProtocolFrom []netip.Prefix

	// Fleet, when set, makes this worker a member of a fleet of gateway
	// hosts over NATS (gateway/fleet.go, docs/fleet.md): node lists in
	// AUTH_OK, GET /v1/nodes, GOAWAY 3014 redirects, evacuation.
	Fleet *FleetConfig
}

func (c *Config) fill() error {
	if c.Keys == nil {
		return fmt.Errorf("gateway: Config.Keys is required")
	}
	if c.Listen == "" {
		c.Listen = ":7100"
	}
	if c.Node == "" {
		h, _ := os.Hostname()
		c.Node = h + "/" + c.Listen
	}
	if c.Backend == nil {
		c.Backend = backend.NewEmbedded()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = WithAuditRing(c.Logger) // /status shows the recent audit lines
	if c.Loops <= 0 {
		// Half the CPUs: measured here, a second loop on a 2-core host cost
		// 10-20% more CPU per heartbeat (every wake-up a context switch),
		// and the other cores serve the forwarding pools and the kernel.
		c.Loops = max(1, runtime.GOMAXPROCS(0)/2)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defi := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	defi(&c.MaxBody, codec.DefaultMaxBody)
	if c.MaxBody > codec.MaxBodyLimit {
		return fmt.Errorf("gateway: MaxBody %d over the protocol limit %d", c.MaxBody, codec.MaxBodyLimit)
	}
	def(&c.AuthTimeout, 10*time.Second)
	def(&c.FrameTimeout, 30*time.Second)
	defi(&c.MinFrameRate, 256)
	def(&c.CloseLinger, 10*time.Second)
	def(&c.WheelTick, time.Second)
	if c.Policies == nil {
		ps := heartbeat.DefaultPolicies()
		if c.HeartbeatInterval > 0 {
			def(&c.IdleTimeout, 2*c.HeartbeatInterval+60*time.Second)
			p := heartbeat.Policy{Min: c.HeartbeatInterval, Max: c.HeartbeatInterval, Idle: c.IdleTimeout}
			ps = heartbeat.Policies{Unknown: p, WiFi: p, Cellular: p}
		}
		c.Policies = &ps
	}
	if err := c.Policies.Validate(); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	defi(&c.MaxFrameRate, 200)
	defi(&c.MaxInflight, 32)
	defi(&c.MaxOutbound, 1<<20)
	defi(&c.PoolSize, 256)
	defi(&c.QueueSize, 16384)
	def(&c.CallTimeout, 5*time.Second)
	if c.SystemRetries < 0 {
		c.SystemRetries = 0
	} else if c.SystemRetries == 0 {
		c.SystemRetries = 1
	}
	def(&c.DrainWindow, 10*time.Second)
	def(&c.PushWindow, 20*time.Millisecond)
	return c.fillEncryption()
}

// AdmissionConfig tunes overload control on the forwarding pools; it lives
// in package admission, which owns the controller.
type AdmissionConfig = admission.Config

// DefaultPriorities: login, sync and send above shake and open, above
// everything else (admission.DefaultPriorities).
func DefaultPriorities() map[string]int { return admission.DefaultPriorities() }
