package wechat

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// ErrBadEnvelope is wrapped by every error Open returns for an envelope that
// cannot be opened (bad base64, bad length, bad padding, a length field out of
// range, another app's envelope). A receiver answers it with 400 and changes
// no state. Its messages name the check that failed, never the key.
var ErrBadEnvelope = errors.New("wechat: bad encrypted envelope")

// ErrWrongAppID: the envelope decrypted but carries another app's appid. It
// wraps ErrBadEnvelope.
var ErrWrongAppID = fmt.Errorf("%w: appid mismatch", ErrBadEnvelope)

// ErrBadSignature: a callback's msg_signature matches no token of the Keyring.
// A receiver rejects the request and changes no state.
var ErrBadSignature = errors.New("wechat: bad callback signature")

const (
	// envelopeKeyLen is the length of an EncodingAESKey: base64 of 32 bytes
	// without its one "=".
	envelopeKeyLen = 43
	// envelopeBlock is the PKCS#7 block WeChat pads to: 32 bytes, not AES's
	// 16, so a pad byte runs from 1 to 32.
	envelopeBlock = 32
	// envelopeHeader is random(16) followed by the uint32 message length.
	envelopeHeader = 16 + 4
	// envelopeMaxEncoded bounds the base64 Encrypt field. Callers already cap
	// a callback body at 64 KiB, so nothing WeChat sends is longer; Seal keeps
	// to the same bound so that whatever it produces, Open accepts.
	envelopeMaxEncoded = 64 << 10
)

// Cipher opens and seals WeChat's AES envelopes (the Encrypt field of
// compatible and safe mode callbacks) for one app. It is immutable and safe
// for concurrent use.
type Cipher struct {
	appID string
	// state sits behind a pointer so that printing a Cipher with %v or %+v
	// shows an address, not the IV (which is half of the key).
	state *aesState
}

type aesState struct {
	block cipher.Block
	iv    [aes.BlockSize]byte
}

// NewCipher returns the Cipher for an app's EncodingAESKey (43 characters) and
// appid. The AES-256 key is base64(encodingAESKey + "="), and the CBC IV is its
// first 16 bytes. Like the official samples, the decoder ignores the two
// spare bits of the 43rd character. Errors never contain the key.
func NewCipher(encodingAESKey, appID string) (*Cipher, error) {
	if appID == "" {
		return nil, errors.New("wechat: cipher: appid is empty")
	}
	if n := len(encodingAESKey); n != envelopeKeyLen {
		return nil, fmt.Errorf("wechat: EncodingAESKey must be %d characters, got %d", envelopeKeyLen, n)
	}
	// StdEncoding skips '\r' and '\n', so the decoded length is checked too.
	key, err := base64.StdEncoding.DecodeString(encodingAESKey + "=")
	if err != nil || len(key) != 32 {
		// err names only a byte offset; still, say nothing about the content.
		return nil, errors.New("wechat: EncodingAESKey is not 43 characters of base64")
	}
	block, err := aes.NewCipher(key)
	if err != nil { // unreachable: the key is 32 bytes
		return nil, errors.New("wechat: EncodingAESKey: cannot build AES-256 cipher")
	}
	st := &aesState{block: block}
	copy(st.iv[:], key)
	clear(key)
	return &Cipher{appID: appID, state: st}, nil
}

// String identifies the Cipher by appid only.
func (c *Cipher) String() string { return "wechat.Cipher(" + c.appID + ")" }

// Open decrypts a base64 Encrypt field: AES-256-CBC without cipher padding,
// PKCS#7 padding to 32 bytes, plaintext random(16) || uint32 BE length || msg
// || appid. It returns msg after checking that the trailing appid is the
// Cipher's. Every error wraps ErrBadEnvelope (ErrWrongAppID for another app's
// envelope).
//
// CBC here carries no MAC, so the distinct errors would be a padding oracle
// if an unauthenticated party could observe them: Keyring checks the
// msg_signature (keyed by the secret token) before it calls Open, and a
// receiver answers every ErrBadEnvelope the same way. Keep it so.
func (c *Cipher) Open(encrypted string) ([]byte, error) {
	if c.state == nil {
		return nil, errors.New("wechat: zero Cipher: use NewCipher")
	}
	if len(encrypted) > envelopeMaxEncoded {
		return nil, fmt.Errorf("%w: %d base64 characters, limit %d", ErrBadEnvelope, len(encrypted), envelopeMaxEncoded)
	}
	raw, err := base64.StdEncoding.DecodeString(encrypted)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64", ErrBadEnvelope)
	}
	// The smallest envelope is random, length, a 1-byte appid and 1 byte of
	// padding, which pads up to one 32-byte block.
	if len(raw) < envelopeBlock {
		return nil, fmt.Errorf("%w: %d bytes, too short (want at least %d)", ErrBadEnvelope, len(raw), envelopeBlock)
	}
	if len(raw)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("%w: %d bytes, not a multiple of %d", ErrBadEnvelope, len(raw), aes.BlockSize)
	}
	pt := make([]byte, len(raw))
	cipher.NewCBCDecrypter(c.state.block, c.state.iv[:]).CryptBlocks(pt, raw)

	pad := int(pt[len(pt)-1])
	if pad < 1 || pad > envelopeBlock {
		return nil, fmt.Errorf("%w: bad padding (pad byte %d, want 1..%d)", ErrBadEnvelope, pad, envelopeBlock)
	}
	for _, b := range pt[len(pt)-pad:] { // len(pt) ≥ 32 ≥ pad
		if int(b) != pad {
			return nil, fmt.Errorf("%w: bad padding (inconsistent pad bytes)", ErrBadEnvelope)
		}
	}
	body := pt[:len(pt)-pad]
	if len(body) < envelopeHeader {
		return nil, fmt.Errorf("%w: %d bytes after padding, no room for the length field", ErrBadEnvelope, len(body))
	}
	// Compare as uint64: a uint32 length near 2^32 must not wrap an int on a
	// 32-bit platform.
	n := uint64(binary.BigEndian.Uint32(body[16:envelopeHeader]))
	if avail := uint64(len(body) - envelopeHeader); n > avail {
		return nil, fmt.Errorf("%w: length field %d exceeds the %d bytes available", ErrBadEnvelope, n, avail)
	}
	end := envelopeHeader + int(n)
	if got := body[end:]; string(got) != c.appID {
		return nil, fmt.Errorf("%w (envelope is for %q)", ErrWrongAppID, envelopeTruncate(got, 64))
	}
	return body[envelopeHeader:end:end], nil
}

// envelopeTruncate bounds what an error quotes from a decrypted envelope.
func envelopeTruncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// Seal encrypts msg into a base64 Encrypt field with 16 random bytes from
// crypto/rand. It fails only for a msg too large for an envelope Open accepts.
func (c *Cipher) Seal(msg []byte) (string, error) {
	var random [16]byte
	if _, err := rand.Read(random[:]); err != nil {
		return "", fmt.Errorf("wechat: seal: %w", err)
	}
	return c.SealWithRandom(msg, random)
}

// SealWithRandom is Seal with the caller's 16 random bytes: deterministic,
// for tests and for reproducing another implementation's output. A real
// reply must use Seal.
func (c *Cipher) SealWithRandom(msg []byte, random [16]byte) (string, error) {
	if c.state == nil {
		return "", errors.New("wechat: zero Cipher: use NewCipher")
	}
	size := envelopeHeader + len(msg) + len(c.appID)
	pad := envelopeBlock - size%envelopeBlock // 1..32; a full block when aligned
	if base64.StdEncoding.EncodedLen(size+pad) > envelopeMaxEncoded {
		return "", fmt.Errorf("wechat: seal: message of %d bytes exceeds the envelope limit of %d base64 characters", len(msg), envelopeMaxEncoded)
	}
	pt := make([]byte, 0, size+pad)
	pt = append(pt, random[:]...)
	pt = binary.BigEndian.AppendUint32(pt, uint32(len(msg))) // bounded above
	pt = append(pt, msg...)
	pt = append(pt, c.appID...)
	pt = append(pt, bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(c.state.block, c.state.iv[:]).CryptBlocks(pt, pt)
	return base64.StdEncoding.EncodeToString(pt), nil
}

// CallbackKeys is one generation of an app's callback credentials, as set in
// the WeChat admin console. AESKey (the EncodingAESKey) is empty for an app in
// plaintext mode. Printing or logging a CallbackKeys shows neither value.
type CallbackKeys struct {
	Token  string
	AESKey string
}

const envelopeRedacted = "[redacted]"

// String keeps fmt from printing the token and key.
func (k CallbackKeys) String() string {
	key := "none"
	if k.AESKey != "" {
		key = envelopeRedacted
	}
	return "wechat.CallbackKeys{Token: " + envelopeRedacted + ", AESKey: " + key + "}"
}

// GoString keeps %#v from printing the token and key.
func (k CallbackKeys) GoString() string { return k.String() }

// LogValue keeps log/slog from printing the token and key.
func (k CallbackKeys) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalJSON keeps encoding/json from printing the token and key.
func (k CallbackKeys) MarshalJSON() ([]byte, error) {
	return []byte(`"` + k.String() + `"`), nil
}

// Keyring checks and opens one app's callbacks with its current and, during a
// rotation, its previous callback credentials. WeChat switches to new values
// the moment they are saved in the console, while callbacks signed with the
// old ones may still be in flight or retried, so both generations are
// accepted until the operator drops the previous one. It is immutable and
// safe for concurrent use.
type Keyring struct {
	appID string
	// Pointers, so that printing a Keyring shows addresses, not tokens.
	gens []*envelopeGeneration // current first
}

type envelopeGeneration struct {
	token  string
	cipher *Cipher // nil in plaintext mode
}

// NewKeyring returns the Keyring of an app. current is required; previous is
// nil outside a rotation. A generation's AESKey may be empty (plaintext mode);
// such a generation only verifies plain signatures. The token and key may
// change independently: a rotation of only the key keeps the same token.
// Errors never contain a token or key.
func NewKeyring(appID string, current CallbackKeys, previous *CallbackKeys) (*Keyring, error) {
	if appID == "" {
		return nil, errors.New("wechat: keyring: appid is empty")
	}
	k := &Keyring{appID: appID}
	add := func(which string, keys CallbackKeys) error {
		if keys.Token == "" {
			return fmt.Errorf("wechat: keyring: %s token is empty", which)
		}
		g := &envelopeGeneration{token: keys.Token}
		if keys.AESKey != "" {
			c, err := NewCipher(keys.AESKey, appID)
			if err != nil {
				return fmt.Errorf("wechat: keyring: %s: %w", which, err)
			}
			g.cipher = c
		}
		k.gens = append(k.gens, g)
		return nil
	}
	if err := add("current", current); err != nil {
		return nil, err
	}
	if previous != nil {
		if err := add("previous", *previous); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// String identifies the Keyring by appid and generation count only.
func (k *Keyring) String() string {
	return fmt.Sprintf("wechat.Keyring(%s, %d generations)", k.appID, len(k.gens))
}

// VerifyPlain reports whether signature = sha1(sort(token, timestamp, nonce))
// for the current or the previous token (URL verification and plaintext-mode
// callbacks), comparing in constant time.
func (k *Keyring) VerifyPlain(signature, timestamp, nonce string) bool {
	for _, g := range k.gens {
		if VerifySignature(signature, g.token, timestamp, nonce) {
			return true
		}
	}
	return false
}

// OpenEncrypted checks msg_signature = sha1(sort(token, timestamp, nonce,
// encrypt)) against each generation that has an AESKey and opens encrypt
// with the key of a generation whose token signed it; it returns the
// plaintext XML. When both generations share a token (only the key was
// rotated) it tries the current key, then the previous one. Errors:
// ErrBadSignature when no token matches, else an ErrBadEnvelope-wrapped error
// from the first matching generation.
func (k *Keyring) OpenEncrypted(msgSignature, timestamp, nonce, encrypt string) ([]byte, error) {
	var firstErr error
	for _, g := range k.gens {
		if g.cipher == nil || !VerifySignature(msgSignature, g.token, timestamp, nonce, encrypt) {
			continue
		}
		msg, err := g.cipher.Open(encrypt)
		if err == nil {
			return msg, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return nil, ErrBadSignature
}

// EchoEncrypted handles URL verification where echostr is itself an
// envelope signed by msg_signature (WeChat Work does this): it verifies
// msg_signature over (token, timestamp, nonce, echostr) and returns the
// decrypted echo, which the receiver writes back as the whole body. The usual
// Official Account check (signature= with a plain echostr, protocol §5) goes
// through VerifyPlain instead.
func (k *Keyring) EchoEncrypted(msgSignature, timestamp, nonce, echostr string) ([]byte, error) {
	return k.OpenEncrypted(msgSignature, timestamp, nonce, echostr)
}

// EncryptedReply seals msg with the current generation and returns the reply
// body WeChat expects in safe mode, in the official samples' layout:
//
//	<xml><Encrypt><![CDATA[…]]></Encrypt><MsgSignature><![CDATA[…]]></MsgSignature><TimeStamp>…</TimeStamp><Nonce><![CDATA[…]]></Nonce></xml>
//
// timestamp must be decimal digits and nonce letters, digits, '-' or '_' (at
// most 64 characters each): both usually echo the request's query, and
// anything else could break out of the CDATA section.
func (k *Keyring) EncryptedReply(msg []byte, timestamp, nonce string) ([]byte, error) {
	if len(k.gens) == 0 {
		return nil, errors.New("wechat: zero Keyring: use NewKeyring")
	}
	cur := k.gens[0]
	if cur.cipher == nil {
		return nil, errors.New("wechat: encrypted reply: the current generation has no EncodingAESKey")
	}
	if !envelopeReplyField(timestamp, false) {
		return nil, errors.New("wechat: encrypted reply: timestamp must be 1 to 64 decimal digits")
	}
	if !envelopeReplyField(nonce, true) {
		return nil, errors.New("wechat: encrypted reply: nonce must be 1 to 64 letters, digits, '-' or '_'")
	}
	enc, err := cur.cipher.Seal(msg)
	if err != nil {
		return nil, fmt.Errorf("wechat: encrypted reply: %w", err)
	}
	var b strings.Builder
	b.WriteString("<xml><Encrypt><![CDATA[")
	b.WriteString(enc) // base64: no ']' or '>'
	b.WriteString("]]></Encrypt><MsgSignature><![CDATA[")
	b.WriteString(Signature(cur.token, timestamp, nonce, enc)) // hex
	b.WriteString("]]></MsgSignature><TimeStamp>")
	b.WriteString(timestamp)
	b.WriteString("</TimeStamp><Nonce><![CDATA[")
	b.WriteString(nonce)
	b.WriteString("]]></Nonce></xml>")
	return []byte(b.String()), nil
}

// envelopeReplyField reports whether s may go into a reply as is: 1..64
// digits, or with letters also letters, digits, '-' and '_'.
func envelopeReplyField(s string, letters bool) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
		case letters && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-' || r == '_'):
		default:
			return false
		}
	}
	return true
}
