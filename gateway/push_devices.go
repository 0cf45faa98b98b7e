package gateway

// Devices implements push.DeviceSink: the device ids of uid's connections on
// this worker (the offline sender asks before notifying a device through
// its platform's push service). Read under the session shard lock.
func (p *pusher) Devices(uid uint64, fn func(device string)) {
	p.s.sessions.each(uid, "", func(c *conn) { fn(c.device) })
}
