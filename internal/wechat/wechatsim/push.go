package wechatsim

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"

	"github.com/wxpush/wxpush/internal/wechat"
)

// PushReply is what an account's server answered a pushed user message or
// event.
type PushReply struct {
	Status      int
	ContentType string
	// Body is the reply exactly as received: a passive reply XML, "success",
	// an encrypted envelope in safe mode, or empty.
	Body []byte
	// Plaintext is the decrypted passive reply when the app is in safe mode
	// and Body is an encrypted envelope (an <Encrypt> element) whose
	// MsgSignature verified; nil otherwise.
	Plaintext []byte
}

// ErrBadReply is wrapped by PushMessage's error for a safe-mode reply that
// carries an <Encrypt> element WeChat would not accept: a missing or wrong
// MsgSignature, or an envelope that does not open for the app.
var ErrBadReply = errors.New("wechatsim: bad encrypted reply")

// pushedMessage is the part of a user message or event PushMessage reads:
// the sender's openid goes into the query.
type pushedMessage struct {
	XMLName      xml.Name `xml:"xml"`
	FromUserName string   `xml:"FromUserName"`
}

// encryptedReply is a safe-mode passive reply.
type encryptedReply struct {
	XMLName      xml.Name `xml:"xml"`
	Encrypt      *string  `xml:"Encrypt"`
	MsgSignature string   `xml:"MsgSignature"`
	TimeStamp    string   `xml:"TimeStamp"`
	Nonce        string   `xml:"Nonce"`
}

// PushMessage delivers msg (a user message or event XML, e.g. a text message
// or a menu CLICK, with the user in FromUserName) to appID's CallbackURL the
// way WeChat does, and returns the reply. The query carries signature,
// timestamp, nonce and openid; in safe mode (the app has an AESKey) the body
// is sealed as <xml><ToUserName/><Encrypt/></xml>, the query gains
// encrypt_type=aes and msg_signature, and an encrypted reply is verified and
// opened into Plaintext.
//
// Unlike result events it makes one try and counts in no Stats: a test
// that pushes a message wants each reply, and WeChat shows the user nothing
// of a failed one. Any HTTP reply, whatever its status, returns a nil error
// unless it is a bad encrypted reply (ErrBadReply, with the reply still
// filled in). The try is bounded by CallbackTimeout, ctx and Close; after
// Close nothing is pushed.
func (s *Server) PushMessage(ctx context.Context, appID string, msg []byte) (PushReply, error) {
	var m pushedMessage
	if err := xml.Unmarshal(msg, &m); err != nil {
		return PushReply{}, fmt.Errorf("wechatsim: push message: not a WeChat message XML: %w", err)
	}
	if m.FromUserName == "" {
		return PushReply{}, errors.New("wechatsim: push message: no FromUserName (the openid of the query)")
	}
	s.mu.Lock()
	a, ok := s.apps[appID]
	var target, token, originalID, aesKey string
	if ok {
		target, token, originalID, aesKey = a.CallbackURL, a.Token, a.OriginalID, a.AESKey
	}
	s.mu.Unlock()
	switch {
	case !ok:
		return PushReply{}, fmt.Errorf("wechatsim: push message: unknown app %q", appID)
	case target == "":
		return PushReply{}, fmt.Errorf("wechatsim: push message: app %q has no callback URL", appID)
	}

	// A fresh timestamp and nonce, as for result events: receivers refuse a
	// stale timestamp and a nonce used with another body.
	timestamp := strconv.FormatInt(s.now().Unix(), 10)
	nonce := strconv.FormatUint(rand.Uint64(), 10)
	u, err := signedURL(target, token, timestamp, nonce, m.FromUserName)
	if err != nil {
		return PushReply{}, fmt.Errorf("wechatsim: push message: callback URL: %w", err)
	}
	body := string(msg)
	if aesKey != "" {
		if body, u, err = sealEvent(u, body, appID, aesKey, token, timestamp, nonce, originalID); err != nil {
			return PushReply{}, fmt.Errorf("wechatsim: push message: seal: %w", err)
		}
	}

	if !s.reserve() {
		return PushReply{}, errors.New("wechatsim: push message: simulator closed")
	}
	defer s.wg.Done()
	rep, err := s.postMessage(ctx, u, body)
	if err != nil {
		return PushReply{}, fmt.Errorf("wechatsim: push message: %w", err)
	}
	if aesKey != "" {
		if rep.Plaintext, err = openReply(rep.Body, appID, aesKey, token); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// postMessage makes the one try of PushMessage and reads the whole reply.
func (s *Server) postMessage(parent context.Context, u, body string) (PushReply, error) {
	// Close ends the try, as it ends result pushes; so do ctx and WeChat's wait.
	ctx, cancel := s.pushContext()
	defer cancel()
	defer context.AfterFunc(parent, cancel)()
	ctx, cancelTry := context.WithTimeout(ctx, s.callbackTimeout)
	defer cancelTry()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		return PushReply{}, err
	}
	req.Header.Set("Content-Type", "text/xml")
	resp, err := s.client.Do(req)
	if err != nil {
		return PushReply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes+1))
	if err != nil {
		return PushReply{}, fmt.Errorf("read reply: %w", err)
	}
	if len(b) > maxBodyBytes {
		return PushReply{}, fmt.Errorf("reply over %d bytes", maxBodyBytes)
	}
	return PushReply{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: b}, nil
}

// openReply verifies and decrypts a safe-mode passive reply. A reply that is
// not an <xml> document with an <Encrypt> element ("success", empty, plain
// XML) has no plaintext and is no error: WeChat accepts "success" and an
// empty body in any mode.
func openReply(body []byte, appID, aesKey, token string) ([]byte, error) {
	var r encryptedReply
	if err := xml.Unmarshal(bytes.TrimSpace(body), &r); err != nil || r.Encrypt == nil {
		return nil, nil
	}
	enc := strings.TrimSpace(*r.Encrypt)
	ts, nonce := strings.TrimSpace(r.TimeStamp), strings.TrimSpace(r.Nonce)
	if r.MsgSignature == "" || ts == "" || nonce == "" {
		return nil, fmt.Errorf("%w: MsgSignature, TimeStamp and Nonce are required beside Encrypt", ErrBadReply)
	}
	want := signature(token, ts, nonce, enc)
	if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(r.MsgSignature)), []byte(want)) != 1 {
		return nil, fmt.Errorf("%w: MsgSignature does not match (token, TimeStamp, Nonce, Encrypt)", ErrBadReply)
	}
	c, err := wechat.NewCipher(aesKey, appID)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadReply, err)
	}
	plain, err := c.Open(enc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadReply, err)
	}
	return plain, nil
}
