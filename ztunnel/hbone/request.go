package hbone

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Headers are the request headers HBONE carries besides :authority.
type Headers struct {
	Forwarded   string // e.g. for="10.0.0.7"; the original client
	Baggage     string // W3C baggage with workload metadata
	Traceparent string // W3C trace context
}

// Request is an accepted-for-parsing CONNECT request on the server side.
type Request struct {
	// Peer is the client's SPIFFE ID, taken from its verified certificate.
	Peer spiffe.ID
	// Authority is the :authority, the original destination ip:port.
	Authority netip.AddrPort
	Headers
	// Target is where the stream should go, as Authorize decided. Zero
	// until Authorize returns.
	Target netip.AddrPort
}

// rejection is an answer to a request refused before the handler runs.
type rejection struct {
	status int
	reason string
}

// requestHeaders is a decoded request header block.
type requestHeaders struct {
	method, authority, scheme, path, protocol string
	fields                                    []hpack.HeaderField
}

func requestHeadersOf(f *http2.MetaHeadersFrame) requestHeaders {
	return requestHeaders{
		method:    f.PseudoValue("method"),
		authority: f.PseudoValue("authority"),
		scheme:    f.PseudoValue("scheme"),
		path:      f.PseudoValue("path"),
		protocol:  f.PseudoValue("protocol"),
		fields:    f.RegularFields(),
	}
}

// connectionHeaders are forbidden in HTTP/2 (RFC 9113 section 8.2.2).
var connectionHeaders = map[string]bool{
	"connection": true, "proxy-connection": true, "keep-alive": true,
	"transfer-encoding": true, "upgrade": true,
}

// parseRequest validates a CONNECT request: method CONNECT (405 otherwise),
// no :scheme, :path or :protocol, :authority an ip:port without zone and
// with a non-zero port (400 otherwise). It never returns both values nil.
func parseRequest(h requestHeaders) (*Request, *rejection) {
	if h.method == "" {
		return nil, &rejection{http.StatusBadRequest, "missing :method"}
	}
	if h.method != http.MethodConnect {
		return nil, &rejection{http.StatusMethodNotAllowed, fmt.Sprintf("method %.32q not allowed: HBONE accepts only CONNECT", h.method)}
	}
	if h.protocol != "" {
		return nil, &rejection{http.StatusBadRequest, "extended CONNECT (:protocol) is not supported"}
	}
	if h.scheme != "" || h.path != "" {
		return nil, &rejection{http.StatusBadRequest, "CONNECT must not carry :scheme or :path"}
	}
	if h.authority == "" {
		return nil, &rejection{http.StatusBadRequest, "missing :authority"}
	}
	ap, err := netip.ParseAddrPort(h.authority)
	if err != nil || ap.Addr().Zone() != "" {
		return nil, &rejection{http.StatusBadRequest, fmt.Sprintf("malformed :authority %.64q: want ip:port", h.authority)}
	}
	if ap.Port() == 0 {
		return nil, &rejection{http.StatusBadRequest, fmt.Sprintf(":authority %s has port 0", ap)}
	}
	req := &Request{Authority: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	for _, f := range h.fields {
		if connectionHeaders[f.Name] || (f.Name == "te" && f.Value != "trailers") {
			return nil, &rejection{http.StatusBadRequest, fmt.Sprintf("connection-specific header %q not allowed in HTTP/2", f.Name)}
		}
		switch f.Name {
		case "forwarded":
			req.Forwarded = joinHeader(req.Forwarded, f.Value, ", ")
		case "baggage":
			req.Baggage = joinHeader(req.Baggage, f.Value, ",")
		case "traceparent":
			if req.Traceparent != "" {
				return nil, &rejection{http.StatusBadRequest, "more than one traceparent header"}
			}
			req.Traceparent = f.Value
		}
	}
	return req, nil
}

func joinHeader(old, v, sep string) string {
	if old == "" {
		return v
	}
	return old + sep + v
}

// statusOf maps an Authorize error to the status answered to the client.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotServed):
		return http.StatusNotFound
	default:
		return http.StatusForbidden
	}
}

// requestFields builds the CONNECT header block a client sends.
func requestFields(authority netip.AddrPort, h Headers) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, 5)
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
		hpack.HeaderField{Name: ":authority", Value: authority.String()})
	add := func(name, v string) {
		if v != "" {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v, Sensitive: false})
		}
	}
	add("forwarded", h.Forwarded)
	add("baggage", h.Baggage)
	add("traceparent", h.Traceparent)
	return fields
}
