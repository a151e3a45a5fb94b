package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/istiod/xds"
	"github.com/ambit-mesh/ambit/istiod/xds/xdstest"
)

// liteResp is what the lite client keeps of a DeltaDiscoveryResponse: it
// scans the wire format instead of decoding, so that clients sharing the
// machine with the server cost little and the figures show the server.
type liteResp struct {
	typeURL, nonce string
	count          int
	names          []string // only for responses of at most liteNames resources
}

const liteNames = 1000

// liteCodec marshals requests as protobuf and scans responses.
type liteCodec struct{}

func (liteCodec) Name() string { return "proto" }

func (liteCodec) Marshal(v any) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }

func (liteCodec) Unmarshal(b []byte, v any) error {
	r := v.(*liteResp)
	*r = liteResp{}
	var names []string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		val, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case 2: // resources
			r.count++
			if len(names) <= liteNames {
				names = append(names, resourceName(val))
			}
		case 4:
			r.typeURL = string(val)
		case 5:
			r.nonce = string(val)
		}
	}
	if r.count <= liteNames {
		r.names = names
	}
	return nil
}

// resourceName returns field 3 (name) of an encoded discovery Resource.
func resourceName(b []byte) string {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return ""
		}
		if num == 3 && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			return string(v)
		}
		b = b[m:]
	}
	return ""
}

// liteClient is a delta ADS client that subscribes, scans and ACKs.
type liteClient struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	sync   chan struct{}
	sig    chan struct{}
	mu     sync.Mutex
	seen   map[string]time.Time
}

func newLite(s *server, i int) (client, error) {
	conn, err := grpc.NewClient(s.addr,
		grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(s.pool, xdstest.ServerName)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(512<<20), grpc.ForceCodec(liteCodec{})),
		grpc.WithInitialWindowSize(int32(*window)), grpc.WithInitialConnWindowSize(int32(*window)))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &liteClient{conn: conn, cancel: cancel, sync: make(chan struct{}), sig: make(chan struct{}, 1), seen: map[string]time.Time{}}
	go func() {
		for ctx.Err() == nil {
			_ = r.stream(ctx, i)
			if ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond) // retry pacing, not readiness
			}
		}
	}()
	return r, nil
}

func (r *liteClient) stream(ctx context.Context, i int) error {
	st, err := r.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources")
	if err != nil {
		return err
	}
	for j, t := range []string{xds.TypeAddress, xds.TypeAuthorization} {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: []string{"*"}}
		if j == 0 {
			req.Node = nodeProto(fmt.Sprintf("lite-%d", i))
		}
		if err := st.SendMsg(req); err != nil {
			return err
		}
	}
	got := map[string]bool{}
	for {
		var resp liteResp
		if err := st.RecvMsg(&resp); err != nil {
			return err
		}
		now := time.Now()
		r.mu.Lock()
		for _, n := range resp.names {
			r.seen[n] = now
		}
		r.mu.Unlock()
		if err := st.SendMsg(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.typeURL, ResponseNonce: resp.nonce}); err != nil {
			return err
		}
		got[resp.typeURL] = true
		if len(got) == 2 {
			select {
			case <-r.sync:
			default:
				close(r.sync)
			}
		}
		select {
		case r.sig <- struct{}{}:
		default:
		}
	}
}

func (r *liteClient) synced() <-chan struct{} { return r.sync }
func (r *liteClient) signal() <-chan struct{} { return r.sig }
func (r *liteClient) close()                  { r.cancel(); _ = r.conn.Close() }
func (r *liteClient) has(_, name string, _ int, since time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[name].After(since)
}
