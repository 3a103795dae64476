package wechatsim

import (
	"github.com/wxpush/wxpush/internal/wechat"

	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// reserve registers a callback push with Close's wait group, or reports that
// the server is closed and nothing may start.
func (s *Server) reserve() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// push waits delay and its turn among the pushers, then delivers every copy
// of ev. The caller reserved it.
func (s *Server) push(ev event, delay time.Duration) {
	defer s.wg.Done()
	ctx, cancel := s.pushContext()
	defer cancel()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
	select {
	case s.pushers <- struct{}{}:
		defer func() { <-s.pushers }()
	case <-ctx.Done():
		return
	}
	for range ev.copies {
		if ctx.Err() != nil {
			return
		}
		s.deliver(ctx, ev)
	}
}

// pushContext returns a context that ends when the server closes, so Close
// never waits on a slow receiver. Its watcher runs under the caller's
// reservation, which keeps the wait group above zero while it is added.
func (s *Server) pushContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-s.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// deliver pushes one copy of ev the way WeChat does: up to three tries, each
// failing on a non-2xx reply or on no reply within the callback timeout.
func (s *Server) deliver(ctx context.Context, ev event) {
	s.mu.Lock()
	a := s.apps[ev.appID]
	target, token, originalID, aesKey := a.CallbackURL, a.Token, a.OriginalID, a.AESKey
	s.mu.Unlock()
	if target == "" {
		s.log.Debug("wechatsim: no callback URL, event dropped", "app", ev.appID, "msgid", ev.msgID)
		return
	}
	body := eventXML(originalID, ev)
	// A current timestamp and a nonce of its own for each copy, as WeChat
	// sends: receivers refuse stale timestamps and a used nonce with another
	// body. 64 random bits keep two events of one second from sharing a
	// nonce even at load-test rates; the tries below resend both unchanged.
	timestamp := strconv.FormatInt(s.now().Unix(), 10)
	nonce := strconv.FormatUint(rand.Uint64(), 10)
	u, err := signedURL(target, token, timestamp, nonce, ev.openID)
	if err != nil {
		s.log.Error("wechatsim: bad callback URL", "app", ev.appID, "err", err)
		return
	}
	if aesKey != "" {
		// Safe mode: the event travels sealed, signed by msg_signature.
		if body, u, err = sealEvent(u, body, ev.appID, aesKey, token, timestamp, nonce, originalID); err != nil {
			s.log.Error("wechatsim: cannot seal event", "app", ev.appID, "err", err)
			return
		}
	}
	for try := 1; try <= callbackTries; try++ {
		s.mu.Lock()
		s.stats.callbackAttempts++
		s.mu.Unlock()
		err := s.post(ctx, u, body)
		if err == nil {
			s.mu.Lock()
			s.stats.callbacksPushed++
			s.mu.Unlock()
			return
		}
		if ctx.Err() != nil {
			// Closed: the test is over, so the event counts neither way.
			return
		}
		s.log.Info("wechatsim: callback try failed", "app", ev.appID, "msgid", ev.msgID, "try", try, "err", err)
	}
	s.mu.Lock()
	s.stats.callbacksFailed++
	s.mu.Unlock()
}

func (s *Server) post(ctx context.Context, u, body string) error {
	ctx, cancel := context.WithTimeout(ctx, s.callbackTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/xml")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Drain so the connection is reused; the reply text does not matter for
	// events.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyBytes))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("reply status %d", resp.StatusCode)
	}
	return nil
}

// signature is WeChat's callback signature: hex(sha1(concat(sort(parts)))).
// It is written here independently of the receiver's code on purpose, so the
// two check each other.
func signature(parts ...string) string {
	sorted := append([]string(nil), parts...)
	sort.Strings(sorted)
	sum := sha1.Sum([]byte(strings.Join(sorted, "")))
	return hex.EncodeToString(sum[:])
}

func signedURL(target, token, timestamp, nonce, openID string) (string, error) {
	u, err := url.Parse(target)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("signature", signature(token, timestamp, nonce))
	q.Set("timestamp", timestamp)
	q.Set("nonce", nonce)
	q.Set("openid", openID)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// eventXML renders the TEMPLATESENDJOBFINISH event exactly as WeChat does,
// MsgID with a capital ID, or the subscribe_msg_sent_event of a subscribe send.
func eventXML(originalID string, ev event) string {
	if ev.sub != nil {
		return subscribeEventXML(originalID, ev)
	}
	return "<xml>\n" +
		"<ToUserName>" + cdata(originalID) + "</ToUserName>\n" +
		"<FromUserName>" + cdata(ev.openID) + "</FromUserName>\n" +
		"<CreateTime>" + strconv.FormatInt(ev.created.Unix(), 10) + "</CreateTime>\n" +
		"<MsgType>" + cdata("event") + "</MsgType>\n" +
		"<Event>" + cdata("TEMPLATESENDJOBFINISH") + "</Event>\n" +
		"<MsgID>" + strconv.FormatInt(ev.msgID, 10) + "</MsgID>\n" +
		"<Status>" + cdata(ev.status) + "</Status>\n" +
		"</xml>"
}

// cdata wraps s in a CDATA section; a "]]>" inside is split across two
// sections because CDATA cannot escape it.
func cdata(s string) string {
	return "<![CDATA[" + strings.ReplaceAll(s, "]]>", "]]]]><![CDATA[>") + "]]>"
}

// sealEvent turns a plain push into a safe-mode one: the body becomes
// <xml><ToUserName/><Encrypt/></xml> and the URL gains encrypt_type and
// msg_signature.
func sealEvent(target, body, appID, aesKey, token, timestamp, nonce, originalID string) (string, string, error) {
	c, err := wechat.NewCipher(aesKey, appID)
	if err != nil {
		return "", "", err
	}
	enc, err := c.Seal([]byte(body))
	if err != nil {
		return "", "", err
	}
	u, err := url.Parse(target)
	if err != nil {
		return "", "", err
	}
	q := u.Query()
	q.Set("encrypt_type", "aes")
	q.Set("msg_signature", signature(token, timestamp, nonce, enc))
	u.RawQuery = q.Encode()
	return "<xml><ToUserName>" + cdata(originalID) + "</ToUserName><Encrypt>" + cdata(enc) + "</Encrypt></xml>", u.String(), nil
}
