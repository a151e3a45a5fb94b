package xds

import "sync/atomic"

// Stats are the server's counters since New.
type Stats struct {
	// Sets is the number of Set calls; Snapshots the number of states
	// published (fewer: debouncing).
	Sets, Snapshots uint64
	// StreamsActive is the number of open streams; StreamsTotal those ever
	// served; StreamsRejected those refused by the rate limit (with
	// ResourceExhausted); StreamsUnauthorized those refused by Authorize.
	StreamsActive                                      int64
	StreamsTotal, StreamsRejected, StreamsUnauthorized uint64
	// Pushes is the number of responses sent; ResourcesSent and
	// RemovalsSent count the resources and removed names they carried.
	Pushes, ResourcesSent, RemovalsSent uint64
	// ACKs and NACKs count client replies to responses of this server.
	ACKs, NACKs uint64
}

type counters struct {
	sets, snapshots                                    atomic.Uint64
	streamsActive                                      atomic.Int64
	streamsTotal, streamsRejected, streamsUnauthorized atomic.Uint64
	pushes, resourcesSent, removalsSent                atomic.Uint64
	acks, nacks                                        atomic.Uint64
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Sets: c.sets.Load(), Snapshots: c.snapshots.Load(),
		StreamsActive: c.streamsActive.Load(), StreamsTotal: c.streamsTotal.Load(),
		StreamsRejected: c.streamsRejected.Load(), StreamsUnauthorized: c.streamsUnauthorized.Load(),
		Pushes: c.pushes.Load(), ResourcesSent: c.resourcesSent.Load(), RemovalsSent: c.removalsSent.Load(),
		ACKs: c.acks.Load(), NACKs: c.nacks.Load(),
	}
}
