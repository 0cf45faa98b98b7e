package push

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Role is what a NATS connection is for; each role has its own user and
// permissions on the embedded server (docs/push.md, "Who may do what on
// NATS"). Nothing is trusted because it is local.
type Role string

// Roles.
const (
	RoleRouter  Role = "router"  // the host's push router (hub): takes ingress and presence, publishes to nodes
	RoleGateway Role = "gateway" // gateway workers (nodes): their deliveries, presence; in-process openers: claims
	RoleOpener  Role = "opener"  // `longlink shake opener`: serves longlink.shake.open, publishes claims
	RoleLedger  Role = "ledger"  // consumes the SHAKE_OPENED durable consumer "ledger"; publishes no claim
	RolePusher  Role = "pusher"  // logic services: the push ingress subjects only
	RoleAdmin   Role = "admin"   // operators: everything (stream purge/delete included)
	RoleStore   Role = "store"   // `longlink logic --store nats://…`: the replicated logic store's stream only
	RoleOffline Role = "offline" // the offline sender and the router's enqueuer: device tokens, the offline queue (offline/)
)

// Roles lists every role, in the order docs/push.md gives them.
var Roles = []Role{RoleRouter, RoleGateway, RoleOpener, RoleLedger, RolePusher, RoleStore, RoleOffline, RoleAdmin}

// Subjects the roles are granted (kept here, beside the subjects
// themselves, so a new subject cannot be used without deciding who may).
const (
	claimStream   = "SHAKE_OPENED"       // shake/opening.StreamName
	claimSubjects = "shake.opened.>"     // shake/opening.SubjectPrefix + ">"
	claimDurable  = "ledger"             // shake/opening.LedgerDurable
	leaseBucket   = "SHAKE_LEDGER_LEASE" // shake/opening.LeaseBucket
	leaseStream   = "KV_" + leaseBucket
	logicStream   = "LONGLINK_LOGIC" // backend/logic's JetStream store, default stream
	logicSubjects = "lgc.>"          // ...and its default subject prefix
	openService   = "longlink.shake.open"
	// Offline notification (offline/): device registrations, the queue,
	// the operator's switches.
	DeviceBucket    = "LONGLINK_DEVICES"
	deviceStream    = "KV_" + DeviceBucket
	OfflineStream   = "LONGLINK_OFFLINE"
	OfflineSubjects = "longlink.offline.>"
	OfflineDurable  = "sender"
	SwitchBucket    = "LONGLINK_OFFLINE_SWITCHES"
	switchStream    = "KV_" + SwitchBucket
	fleetState      = "longlink.fleet.state.>" // fleet.SubjectState: hosts' announcements
	fleetAdmin      = "longlink.fleet.admin.>" // fleet.SubjectAdmin: operators' requests (only admin publishes)
	fleetKeys       = "longlink.fleet.keys"    // fleet.SubjectKeys: "keys published, fetch now"
	fleetKeysKV     = "KV_LONGLINK_FLEET_KEYS" // fleet.KeysBucket's stream: the distributed key files
	jsAPI           = "$JS.API."
)

// InboxPrefix is the reply-subject prefix of a role's connections
// (nats.CustomInboxPrefix): a role may subscribe only to its own replies,
// so no role can read answers meant for another.
func InboxPrefix(r Role) string { return "_INBOX_" + string(r) }

// claimWriter is what publishing a claim needs: the stream's info and
// creation (EnsureStream), the publish itself, and reading a packet's claim
// back (a second OPEN is answered from it).
var claimWriter = []string{
	claimSubjects,
	jsAPI + "INFO",
	jsAPI + "STREAM.INFO." + claimStream,
	jsAPI + "STREAM.CREATE." + claimStream,
	// No STREAM.UPDATE: an update could change MaxMsgsPerSubject or lift
	// DenyPurge; opening.EnsureStream creates the stream only when absent.
	jsAPI + "STREAM.MSG.GET." + claimStream,
	jsAPI + "DIRECT.GET." + claimStream,
	jsAPI + "DIRECT.GET." + claimStream + ".>",
}

// Permissions returns what role r may publish and subscribe to on the
// embedded server. Anything not allowed is refused; the claim stream can be
// purged or deleted, and its consumers deleted, only by RoleAdmin.
func Permissions(r Role) (*server.Permissions, error) {
	inbox := InboxPrefix(r) + ".>"
	resp := &server.ResponsePermission{MaxMsgs: 1} // answer requests received (router, opener service)
	switch r {
	case RoleRouter:
		return &server.Permissions{
			// The host's top process also reads the distributed key files
			// (fleet.KeyFollower: read-only; only admin writes them).
			Publish: &server.SubjectPermission{Allow: []string{SubjectAll, SubjectResync, nodeSubjectBase + ">",
				jsAPI + "INFO", jsAPI + "STREAM.INFO." + fleetKeysKV, jsAPI + "STREAM.MSG.GET." + fleetKeysKV,
				jsAPI + "DIRECT.GET." + fleetKeysKV, jsAPI + "DIRECT.GET." + fleetKeysKV + ".>"}},
			// fleetState: forget a dead host's users as soon as it leaves the fleet view.
			Subscribe: &server.SubjectPermission{Allow: []string{SubjectPresence, SubjectNotify, SubjectMulticast, SubjectBroadcast, SubjectDevices, SubjectLost, fleetState, fleetKeys, inbox}},
			Response:  resp, // answers pushers' requests
		}, nil
	case RoleGateway:
		// A worker faces the internet: it may announce presence and claim
		// packets, never push to another node's users. In a fleet it
		// announces its state, hears the others', and answers (never
		// sends) admin requests; it cannot write the fleet's keys.
		return &server.Permissions{
			// $KV.LONGLINK_DEVICES.>: device.register writes (and deletes)
			// registrations, write-only: a worker cannot read the tokens.
			// SubjectLost: pushes a closed connection may not have received
			// (lost.go); the router hands them to the offline path.
			Publish:   &server.SubjectPermission{Allow: append([]string{SubjectPresence, SubjectLost, openService, "$KV." + DeviceBucket + ".>", fleetState}, claimWriter...)},
			Subscribe: &server.SubjectPermission{Allow: []string{nodeSubjectBase + ">", SubjectAll, SubjectResync, fleetState, fleetAdmin, inbox}},
			Response:  resp, // answers the router's device queries (devices.go) and admin requests
		}, nil
	case RoleOpener:
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: append([]string(nil), claimWriter...)},
			Subscribe: &server.SubjectPermission{Allow: []string{openService, inbox}},
			Response:  resp,
		}, nil
	case RoleLedger:
		c := jsAPI + "CONSUMER."
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				jsAPI + "INFO",
				jsAPI + "STREAM.INFO." + claimStream,
				jsAPI + "STREAM.CREATE." + claimStream,
				// The ledger's lease (opening.LeaseBucket, a KV bucket).
				jsAPI + "STREAM.INFO." + leaseStream,
				jsAPI + "STREAM.CREATE." + leaseStream,
				jsAPI + "STREAM.MSG.GET." + leaseStream,
				jsAPI + "DIRECT.GET." + leaseStream,
				jsAPI + "DIRECT.GET." + leaseStream + ".>",
				"$KV." + leaseBucket + ".>",
				c + "CREATE." + claimStream + "." + claimDurable,
				c + "CREATE." + claimStream + "." + claimDurable + ".>",
				c + "DURABLE.CREATE." + claimStream + "." + claimDurable,
				c + "INFO." + claimStream + "." + claimDurable,
				c + "MSG.NEXT." + claimStream + "." + claimDurable,
				"$JS.ACK." + claimStream + "." + claimDurable + ".>",
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{inbox}},
		}, nil
	case RolePusher:
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{SubjectNotify, SubjectMulticast, SubjectBroadcast}},
			Subscribe: &server.SubjectPermission{Allow: []string{inbox}},
		}, nil
	case RoleStore:
		// backend/logic's JetStream store: its stream (LONGLINK_LOGIC by
		// default) and subjects (lgc.>), nothing of push or shake.
		st := jsAPI + "STREAM."
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				jsAPI + "INFO",
				st + "INFO." + logicStream, st + "CREATE." + logicStream, st + "UPDATE." + logicStream, st + "MSG.GET." + logicStream,
				jsAPI + "DIRECT.GET." + logicStream, jsAPI + "DIRECT.GET." + logicStream + ".>",
				logicSubjects,
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{inbox}},
		}, nil
	case RoleOffline:
		// Its own streams only: create, read, update (no purge or delete of
		// a stream), its consumers, its KV keys; device queries; nothing of
		// push delivery, shake or the logic.
		st, c := jsAPI+"STREAM.", jsAPI+"CONSUMER."
		allow := []string{jsAPI + "INFO", OfflineSubjects, "$JS.ACK." + OfflineStream + ".>", "$JS.FC.>", SubjectDevices,
			"$KV." + DeviceBucket + ".>", "$KV." + SwitchBucket + ".>"}
		for _, s := range []string{deviceStream, OfflineStream, switchStream} {
			allow = append(allow, st+"INFO."+s, st+"CREATE."+s, st+"UPDATE."+s, st+"MSG.GET."+s,
				jsAPI+"DIRECT.GET."+s, jsAPI+"DIRECT.GET."+s+".>",
				c+"CREATE."+s, c+"CREATE."+s+".>", c+"DURABLE.CREATE."+s+".>", c+"INFO."+s+".>", c+"MSG.NEXT."+s+".>", c+"DELETE."+s+".>")
		}
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: allow},
			Subscribe: &server.SubjectPermission{Allow: []string{inbox}},
		}, nil
	case RoleAdmin:
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}},
		}, nil
	}
	return nil, fmt.Errorf("push: unknown NATS role %q", r)
}

// Secret is a host's NATS secret: every role's password on the embedded
// server is derived from it, so the supervisor, its workers and services on
// the same host (given the file) agree without a password list.
type Secret []byte

// SecretFile is the secret's file name in the data directory.
const SecretFile = "nats.secret"

// LoadOrCreateSecret reads the secret at path, creating it (0600, in a 0700
// directory) if absent. Only the gateway's top process creates it.
func LoadOrCreateSecret(path string) (Secret, bool, error) {
	s, err := LoadSecret(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return s, false, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("push: NATS secret %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) { // lost a race: use the winner's
		s, err := LoadSecret(path)
		return s, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("push: NATS secret %s: %w", path, err)
	}
	defer f.Close()
	if _, err := f.WriteString(hex.EncodeToString(b) + "\n"); err != nil {
		return nil, false, fmt.Errorf("push: NATS secret %s: %w", path, err)
	}
	return b, true, f.Sync()
}

// LoadSecret reads an existing secret and refuses one that others than its
// owner may read.
func LoadSecret(path string) (Secret, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("push: NATS secret %s: %w", path, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("push: NATS secret %s is mode %#o: readable by others (chmod 600 it)", path, st.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("push: NATS secret %s: %w", path, err)
	}
	b, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(b) < 16 {
		return nil, fmt.Errorf("push: NATS secret %s: want at least 32 hex digits", path)
	}
	return b, nil
}

// Password is role r's password on the embedded server.
func (s Secret) Password(r Role) string {
	m := hmac.New(sha256.New, s)
	m.Write([]byte("longlink nats password\x00" + string(r)))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// users is the embedded server's user list: one user per role.
func (s Secret) users() ([]*server.User, error) {
	var us []*server.User
	for _, r := range Roles {
		p, err := Permissions(r)
		if err != nil {
			return nil, err
		}
		us = append(us, &server.User{Username: string(r), Password: s.Password(r), Permissions: p})
	}
	return us, nil
}

// ClientAuth says how this process authenticates to NATS, and with which
// TLS. Exactly one source of credentials is used, in this order: CredsFile
// (a NATS .creds file, for clusters in operator/JWT mode), User/Password,
// Secret or SecretFile (the embedded server of this host: the role's
// derived password).
// With none, connections carry no credentials (an open external server).
type ClientAuth struct {
	Secret         Secret
	SecretFile     string // like Secret, read at each connection attempt (the gateway may create it after we start)
	CredsFile      string
	User, Password string

	TLSCA, TLSCert, TLSKey string // files; CA alone verifies the server, cert+key add a client certificate
	PlaintextOK            bool   // allow a non-loopback NATS without TLS (a private network: say so explicitly)
}

// As returns the nats.Option that authenticates a connection as role r
// (and sets the role's inbox prefix and TLS). Problems (unreadable files)
// surface as the error of push.Connect.
func (a ClientAuth) As(r Role) nats.Option {
	return func(o *nats.Options) error {
		if _, err := Permissions(r); err != nil {
			return err
		}
		o.InboxPrefix = InboxPrefix(r)
		switch {
		case a.CredsFile != "":
			if _, err := os.Stat(a.CredsFile); err != nil {
				return fmt.Errorf("push: --nats-creds: %w", err)
			}
			if err := nats.UserCredentials(a.CredsFile)(o); err != nil {
				return err
			}
		case a.User != "":
			o.User, o.Password = a.User, a.Password
		case a.Secret != nil:
			o.User, o.Password = string(r), a.Secret.Password(r)
		case a.SecretFile != "":
			path := a.SecretFile
			o.UserInfo = func() (string, string) {
				s, err := LoadSecret(path)
				if err != nil {
					return string(r), "" // refused; retried at the next attempt
				}
				return string(r), s.Password(r)
			}
		}
		if a.TLSCA != "" || a.TLSCert != "" {
			tc, err := a.tlsConfig()
			if err != nil {
				return err
			}
			o.TLSConfig, o.Secure = tc, true
		}
		if !o.Secure && !a.PlaintextOK {
			for _, u := range append([]string{o.Url}, o.Servers...) {
				if u != "" && !tlsURL(u) && !loopbackURL(u) {
					return fmt.Errorf("push: NATS %s is not on loopback and no TLS is configured (--nats-tls-ca, or a tls:// URL; --nats-plaintext-ok to accept it)", redactURL(u))
				}
			}
		}
		return nil
	}
}

func (a ClientAuth) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.TLSCA != "" {
		pem, err := os.ReadFile(a.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("push: --nats-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("push: --nats-tls-ca %s: no PEM certificate in it", a.TLSCA)
		}
		tc.RootCAs = pool
	}
	if a.TLSCert != "" || a.TLSKey != "" {
		c, err := tls.LoadX509KeyPair(a.TLSCert, a.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("push: --nats-tls-cert/--nats-tls-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

func tlsURL(u string) bool { return strings.HasPrefix(strings.TrimSpace(u), "tls://") }

// loopbackURL reports whether a NATS URL's host is a loopback address (or
// localhost): traffic that never leaves the host.
func loopbackURL(raw string) bool {
	raw = strings.TrimSpace(raw)
	if !strings.Contains(raw, "://") {
		raw = "nats://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	return isLoopbackHost(u.Hostname())
}

// redactURL drops credentials from a NATS URL for messages.
func redactURL(raw string) string {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.User == nil {
		return strings.TrimSpace(raw)
	}
	u.User = nil
	return u.String()
}

// RedactURLs is urls (comma-separated) without credentials, for logs and errors.
func RedactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		parts[i] = redactURL(p)
	}
	return strings.Join(parts, ",")
}
