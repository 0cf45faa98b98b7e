package logic

import (
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/longlink/longlink/push"
)

// StoreOptions are the connection settings of OpenStore beyond the URL.
type StoreOptions struct {
	Creds    string // NATS credentials file (JWT + nkey seed)
	User     string // NATS user, with Password (or give them in the URL)
	Password string
	// SecretFile: a longlink host's NATS secret (<data>/nats.secret), for a
	// store on a gateway host's embedded NATS (role "store").
	SecretFile string
	// TLS to the store's NATS servers (files): the CA alone verifies them,
	// cert and key add a client certificate. Plaintext off loopback is
	// refused; a tls:// URL with the system roots works too.
	TLSCA, TLSCert, TLSKey string
	Logger                 *slog.Logger
}

// OpenStore opens the store a URL names:
//
//	bbolt:///path/to/logic.db   the embedded single-process store
//	nats://host:4222[,host:4222…][?replicas=3&stream=LONGLINK_LOGIC]
//	                            the replicated JetStream store (tls:// too;
//	                            user:password@ in the URL is honoured)
func OpenStore(u string, o StoreOptions) (Store, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if path, ok := strings.CutPrefix(u, "bbolt://"); ok {
		if path == "" {
			return nil, fmt.Errorf("logic: store %q names no file (bbolt:///path/to/logic.db)", u)
		}
		return OpenBolt(path)
	}
	if !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
		return nil, fmt.Errorf("logic: store %q: want bbolt:///path or nats://host:port[,host:port…]", u)
	}
	servers, query, _ := strings.Cut(u, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("logic: store %q: %w", u, err)
	}
	cfg := JSConfig{Stream: q.Get("stream"), OwnConn: true}
	for k := range q {
		if k != "stream" && k != "replicas" {
			return nil, fmt.Errorf("logic: store %q: unknown parameter %q (want replicas, stream)", u, k)
		}
	}
	if r := q.Get("replicas"); r != "" {
		if cfg.Replicas, err = strconv.Atoi(r); err != nil || cfg.Replicas < 1 || cfg.Replicas > 5 {
			return nil, fmt.Errorf("logic: store %q: replicas must be 1 to 5", u)
		}
	}
	// The store role's credentials (push.RoleStore: this stream only);
	// plaintext off loopback is refused (use a tls:// URL).
	ca := push.ClientAuth{CredsFile: o.Creds, User: o.User, Password: o.Password, SecretFile: o.SecretFile,
		TLSCA: o.TLSCA, TLSCert: o.TLSCert, TLSKey: o.TLSKey}
	// Fail at start when no server answers, instead of retrying forever.
	opts := []nats.Option{ca.As(push.RoleStore), nats.RetryOnFailedConnect(false)}
	nc, err := push.Connect(servers, "longlink-logic-store", o.Logger, opts...)
	if err != nil {
		return nil, fmt.Errorf("logic: store %s: %w", servers, err)
	}
	cfg.Conn = nc
	st, err := OpenJetStream(cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return st, nil
}
