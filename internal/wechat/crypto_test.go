package wechat_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wxpush/wxpush/internal/wechat"
)

// The fixed app of these tests is the one of WeChat's official sample (and of
// WxJava's WxCryptUtilTest, see testdata/crypto), so the published envelopes
// are valid inputs of the fuzz target too.
const (
	envelopeTestKey   = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	envelopeTestAppID = "wxb11529c136998cb6"
)

// envelopeMaxDecoded is the largest envelope Open accepts: 64 KiB of base64.
const envelopeMaxDecoded = (64 << 10) / 4 * 3

func envelopeTestCipher(t testing.TB) *wechat.Cipher {
	t.Helper()
	c, err := wechat.NewCipher(envelopeTestKey, envelopeTestAppID)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// aesTestKey derives the AES key from an EncodingAESKey the way the protocol
// describes it, independently of crypto.go.
func aesTestKey(t testing.TB, encodingAESKey string) []byte {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(encodingAESKey + "=")
	if err != nil || len(key) != 32 {
		t.Fatalf("test key does not decode to 32 bytes: %v", err)
	}
	return key
}

// aesTestKeyFrom returns a valid EncodingAESKey derived from seed.
func aesTestKeyFrom(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return base64.StdEncoding.EncodeToString(sum[:])[:43]
}

// aesTestCBC runs raw AES-256-CBC (IV = key[:16], no padding) over pt, whose
// length must be a multiple of 16.
func aesTestCBC(key, in []byte, encrypt bool) []byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // test keys are 32 bytes
	}
	out := make([]byte, len(in))
	if encrypt {
		cipher.NewCBCEncrypter(block, key[:16]).CryptBlocks(out, in)
	} else {
		cipher.NewCBCDecrypter(block, key[:16]).CryptBlocks(out, in)
	}
	return out
}

// envelopePlain assembles a plaintext by hand: random || length field || msg
// || appid || padCount bytes of padByte.
func envelopePlain(length uint32, msg, appID string, padByte byte, padCount int) []byte {
	pt := []byte("0123456789abcdef")
	pt = binary.BigEndian.AppendUint32(pt, length)
	pt = append(pt, msg...)
	pt = append(pt, appID...)
	return append(pt, bytes.Repeat([]byte{padByte}, padCount)...)
}

// envelopeSealRaw encrypts a hand-made plaintext under the test key.
func envelopeSealRaw(t testing.TB, pt []byte) string {
	t.Helper()
	if len(pt)%16 != 0 {
		t.Fatalf("hand-made plaintext of %d bytes is not a multiple of 16", len(pt))
	}
	return base64.StdEncoding.EncodeToString(aesTestCBC(aesTestKey(t, envelopeTestKey), pt, true))
}

// envelopeNoLeak fails if text contains an EncodingAESKey, the AES key in
// hex, base64 or raw form, or any 8-character piece of them.
func envelopeNoLeak(t testing.TB, what, text string, encodingAESKeys ...string) {
	t.Helper()
	for _, k := range encodingAESKeys {
		forms := []string{k}
		// A deliberately malformed key has only its text to leak.
		if key, err := base64.StdEncoding.DecodeString(k + "="); err == nil {
			if strings.Contains(text, string(key)) {
				t.Errorf("%s contains the raw key: %q", what, text)
			}
			forms = append(forms, hex.EncodeToString(key), strings.ToUpper(hex.EncodeToString(key)))
		}
		for _, form := range forms {
			for i := 0; i+8 <= len(form); i++ {
				if strings.Contains(text, form[i:i+8]) {
					t.Errorf("%s contains part of the key (%q): %q", what, form[i:i+8], text)
					break
				}
			}
		}
	}
}

// envelopeXMLFields returns the text of each child element of the root.
func envelopeXMLFields(t testing.TB, doc []byte) map[string]string {
	t.Helper()
	var root struct {
		Fields []struct {
			XMLName xml.Name
			Text    string `xml:",chardata"`
		} `xml:",any"`
	}
	if err := xml.Unmarshal(doc, &root); err != nil {
		t.Fatalf("not XML: %v\n%s", err, doc)
	}
	m := make(map[string]string, len(root.Fields))
	for _, f := range root.Fields {
		m[f.XMLName.Local] = f.Text
	}
	return m
}

// envelopeVectorFile is one testdata/crypto/*.json file: vectors copied
// verbatim from a published implementation's tests or samples.
type envelopeVectorFile struct {
	Source string `json:"source"`
	Copies []struct {
		Repository string `json:"repository"`
		Path       string `json:"path"`
		Commit     string `json:"commit"`
	} `json:"copies"`
	Note    string           `json:"note"`
	Vectors []envelopeVector `json:"vectors"`
}

type envelopeVector struct {
	Name            string            `json:"name"`
	Kind            string            `json:"kind"` // "message" (default) or "echo"
	EncodingAESKey  string            `json:"encoding_aes_key"`
	AppID           string            `json:"app_id"`
	Token           string            `json:"token"`
	Timestamp       string            `json:"timestamp"`
	Nonce           string            `json:"nonce"`
	BadNonce        string            `json:"bad_nonce"`
	MsgSignature    string            `json:"msg_signature"`
	Random          string            `json:"random"`
	Encrypt         string            `json:"encrypt"`
	Plaintext       *string           `json:"plaintext"`
	PlaintextFields map[string]string `json:"plaintext_fields"`
	ReplyXML        string            `json:"reply_xml"`
}

// TestCryptoPublishedVectors opens envelopes made by independent published
// implementations (WeChat's official Python sample, WxJava, wechatpy) and
// reproduces their sealed output and signatures byte for byte.
func TestCryptoPublishedVectors(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("testdata", "crypto", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("found %d vector files in testdata/crypto, want the 3 published sources", len(files))
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var vf envelopeVectorFile
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&vf); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if vf.Source == "" || len(vf.Copies) == 0 || vf.Copies[0].Repository == "" || vf.Copies[0].Path == "" {
			t.Fatalf("%s: every vector file names its source repository and path", file)
		}
		if len(vf.Vectors) == 0 {
			t.Fatalf("%s: no vectors", file)
		}
		for _, v := range vf.Vectors {
			t.Run(filepath.Base(file)+"/"+v.Name, func(t *testing.T) {
				t.Parallel()
				envelopeCheckVector(t, v)
			})
		}
	}
}

func envelopeCheckVector(t *testing.T, v envelopeVector) {
	c, err := wechat.NewCipher(v.EncodingAESKey, v.AppID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Open(v.Encrypt)
	if err != nil {
		t.Fatalf("Open(published envelope): %v", err)
	}
	if len(got) == 0 {
		t.Fatal("Open returned an empty message")
	}
	if v.Plaintext != nil && string(got) != *v.Plaintext {
		t.Errorf("Open = %q, want the published plaintext %q", got, *v.Plaintext)
	}
	if v.PlaintextFields != nil {
		fields := envelopeXMLFields(t, got)
		for name, want := range v.PlaintextFields {
			if fields[name] != want {
				t.Errorf("decrypted <%s> = %q, want %q", name, fields[name], want)
			}
		}
	}
	if v.Random != "" {
		if v.Plaintext == nil || len(v.Random) != 16 {
			t.Fatal("a vector with random needs a plaintext and 16 random bytes")
		}
		sealed, err := c.SealWithRandom([]byte(*v.Plaintext), [16]byte([]byte(v.Random)))
		if err != nil {
			t.Fatal(err)
		}
		if sealed != v.Encrypt {
			t.Errorf("SealWithRandom = %s\nwant the published %s", sealed, v.Encrypt)
		}
	}

	// Another app's Cipher with the same key refuses the envelope.
	other, err := wechat.NewCipher(v.EncodingAESKey, "wx0000000000000000")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Open(v.Encrypt); !errors.Is(err, wechat.ErrWrongAppID) {
		t.Errorf("Open with another appid: err = %v, want ErrWrongAppID", err)
	}

	if v.MsgSignature == "" {
		return
	}
	if !wechat.VerifySignature(v.MsgSignature, v.Token, v.Timestamp, v.Nonce, v.Encrypt) {
		t.Errorf("published msg_signature %s does not verify", v.MsgSignature)
	}
	keys := wechat.CallbackKeys{Token: v.Token, AESKey: v.EncodingAESKey}
	unrelated := wechat.CallbackKeys{Token: "unrelated", AESKey: aesTestKeyFrom("unrelated")}
	open := func(k *wechat.Keyring, nonce string) ([]byte, error) {
		if v.Kind == "echo" {
			return k.EchoEncrypted(v.MsgSignature, v.Timestamp, nonce, v.Encrypt)
		}
		return k.OpenEncrypted(v.MsgSignature, v.Timestamp, nonce, v.Encrypt)
	}
	rings := map[string]struct {
		current  wechat.CallbackKeys
		previous *wechat.CallbackKeys
	}{
		"as current":  {keys, nil},
		"as previous": {unrelated, &keys},
	}
	for name, r := range rings {
		k, err := wechat.NewKeyring(v.AppID, r.current, r.previous)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := open(k, v.Nonce)
		if err != nil || !bytes.Equal(msg, got) {
			t.Errorf("%s: keyring open = %q, %v; want %q", name, msg, err, got)
		}
		bad := v.BadNonce
		if bad == "" {
			bad = v.Nonce + "0"
		}
		if _, err := open(k, bad); !errors.Is(err, wechat.ErrBadSignature) {
			t.Errorf("%s: with nonce %q: err = %v, want ErrBadSignature", name, bad, err)
		}
	}

	if v.ReplyXML != "" {
		envelopeCheckReplyLayout(t, v, keys)
	}
}

// envelopeCheckReplyLayout compares EncryptedReply with a published reply:
// the same document once the random-dependent Encrypt and MsgSignature are
// swapped for the published ones (and the published line breaks dropped).
func envelopeCheckReplyLayout(t *testing.T, v envelopeVector, keys wechat.CallbackKeys) {
	k, err := wechat.NewKeyring(v.AppID, keys, nil)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := k.EncryptedReply([]byte(*v.Plaintext), v.Timestamp, v.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	f := envelopeXMLFields(t, reply)
	msg, err := k.OpenEncrypted(f["MsgSignature"], f["TimeStamp"], f["Nonce"], f["Encrypt"])
	if err != nil || string(msg) != *v.Plaintext {
		t.Fatalf("our reply does not open: %q, %v", msg, err)
	}
	swapped := strings.NewReplacer(f["Encrypt"], v.Encrypt, f["MsgSignature"], v.MsgSignature).Replace(string(reply))
	if want := strings.ReplaceAll(v.ReplyXML, "\n", ""); swapped != want {
		t.Errorf("reply layout differs from the published one:\n got %s\nwant %s", swapped, want)
	}
}

func TestCipherRoundTrip(t *testing.T) {
	t.Parallel()
	c := envelopeTestCipher(t)
	// random(16) + length(4) + appid(18) = 38 bytes around msg, so a 26-byte
	// msg is block-aligned (pad 32) and a 25-byte one takes pad 1.
	tests := []struct {
		name    string
		msg     []byte
		wantPad int
	}{
		{name: "empty", msg: nil, wantPad: 26},
		{name: "pad 1", msg: bytes.Repeat([]byte("a"), 25), wantPad: 1},
		{name: "aligned: a whole block of padding", msg: bytes.Repeat([]byte("b"), 26), wantPad: 32},
		{name: "event XML", msg: []byte(callbackBody("<MsgID>200163836</MsgID>", callbackStatus))},
		{name: "utf-8", msg: []byte("我是中文abcd123")},
		{name: "binary", msg: []byte{0, 0xff, 0x10, 0x20, 0, 0}},
		{name: "largest", msg: bytes.Repeat([]byte("x"), envelopeMaxDecoded-38-1)},
	}
	key := aesTestKey(t, envelopeTestKey)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			random := [16]byte{byte(i), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
			sealed, err := c.SealWithRandom(tt.msg, random)
			if err != nil {
				t.Fatal(err)
			}
			again, err := c.SealWithRandom(tt.msg, random)
			if err != nil || again != sealed {
				t.Errorf("SealWithRandom is not deterministic")
			}
			got, err := c.Open(sealed)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.msg) {
				t.Errorf("Open(Seal(msg)) = %q, want %q", envelopeShort(got), envelopeShort(tt.msg))
			}
			raw, _ := base64.StdEncoding.DecodeString(sealed)
			if len(raw)%32 != 0 {
				t.Errorf("sealed length %d is not a multiple of 32", len(raw))
			}
			pt := aesTestCBC(key, raw, false)
			if !bytes.Equal(pt[:16], random[:]) {
				t.Errorf("plaintext does not start with the random bytes")
			}
			if tt.wantPad != 0 && int(pt[len(pt)-1]) != tt.wantPad {
				t.Errorf("pad = %d, want %d", pt[len(pt)-1], tt.wantPad)
			}

			fresh1, err1 := c.Seal(tt.msg)
			fresh2, err2 := c.Seal(tt.msg)
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			if fresh1 == fresh2 {
				t.Error("Seal used the same random bytes twice")
			}
			if got, err := c.Open(fresh1); err != nil || !bytes.Equal(got, tt.msg) {
				t.Errorf("Open(Seal(msg)) = %q, %v", envelopeShort(got), err)
			}
		})
	}

	t.Run("too large to seal", func(t *testing.T) {
		t.Parallel()
		_, err := c.Seal(make([]byte, envelopeMaxDecoded-38))
		if err == nil {
			t.Fatal("Seal accepted a message whose envelope Open would refuse")
		}
	})
}

func envelopeShort(b []byte) string {
	if len(b) > 64 {
		return fmt.Sprintf("%s… (%d bytes)", b[:64], len(b))
	}
	return string(b)
}

func TestCipherOpenErrors(t *testing.T) {
	t.Parallel()
	c := envelopeTestCipher(t)
	appLen := len(envelopeTestAppID)
	// "hello" + header + appid = 43 bytes; pad 21 makes 64.
	tests := []struct {
		name      string
		encrypted string
		wantIn    string
		wrongApp  bool
	}{
		{name: "bad base64", encrypted: "not*base64!", wantIn: "not base64"},
		{name: "unpadded base64", encrypted: strings.TrimRight(envelopeSealRaw(t, envelopePlain(5, "hello", envelopeTestAppID, 21, 21)), "="), wantIn: "not base64"},
		{name: "empty", encrypted: "", wantIn: "too short"},
		{name: "short: one AES block", encrypted: base64.StdEncoding.EncodeToString(make([]byte, 16)), wantIn: "too short"},
		{name: "not a multiple of 16", encrypted: base64.StdEncoding.EncodeToString(make([]byte, 40)), wantIn: "not a multiple of 16"},
		{name: "too large", encrypted: strings.Repeat("AAAA", (64<<10)/4+1), wantIn: "limit"},
		{name: "pad 0", encrypted: envelopeSealRaw(t, envelopePlain(5, "hello", envelopeTestAppID, 0, 21)), wantIn: "bad padding"},
		{name: "pad 33", encrypted: envelopeSealRaw(t, append(envelopePlain(5, "hello", envelopeTestAppID, 33, 20), 33)), wantIn: "bad padding"},
		{name: "pad 255", encrypted: envelopeSealRaw(t, envelopePlain(5, "hello", envelopeTestAppID, 255, 21)), wantIn: "bad padding"},
		{name: "inconsistent padding bytes", encrypted: envelopeSealRaw(t, append(envelopePlain(5, "hello", envelopeTestAppID, 21, 19), 20, 21)), wantIn: "inconsistent"},
		{name: "all padding: no room for the length field", encrypted: envelopeSealRaw(t, bytes.Repeat([]byte{32}, 32)), wantIn: "no room for the length field"},
		{name: "length field bigger than the data", encrypted: envelopeSealRaw(t, envelopePlain(uint32(5+appLen+1), "hello", envelopeTestAppID, 21, 21)), wantIn: "length field"},
		{name: "length field 2^32-1", encrypted: envelopeSealRaw(t, envelopePlain(0xffffffff, "hello", envelopeTestAppID, 21, 21)), wantIn: "length field"},
		{name: "length field eats the appid", encrypted: envelopeSealRaw(t, envelopePlain(5+4, "hello", envelopeTestAppID, 21, 21)), wantIn: "appid mismatch", wrongApp: true},
		{name: "wrong appid", encrypted: envelopeSealRaw(t, envelopePlain(5, "hello", "wx0000000000000000", 21, 21)), wantIn: "appid mismatch", wrongApp: true},
		{name: "no appid", encrypted: envelopeSealRaw(t, envelopePlain(5, "hello", "", 7, 7)), wantIn: "appid mismatch", wrongApp: true},
		{name: "appid with a suffix", encrypted: envelopeSealRaw(t, envelopePlain(5, "hello", envelopeTestAppID+"x", 20, 20)), wantIn: "appid mismatch", wrongApp: true},
		{name: "published envelope, one byte flipped", encrypted: envelopeFlip(t, "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==", 20), wantIn: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg, err := c.Open(tt.encrypted)
			if err == nil {
				t.Fatalf("Open succeeded: %q", msg)
			}
			if msg != nil {
				t.Errorf("Open returned %q with an error", msg)
			}
			if !errors.Is(err, wechat.ErrBadEnvelope) {
				t.Errorf("error %v does not wrap ErrBadEnvelope", err)
			}
			if got := errors.Is(err, wechat.ErrWrongAppID); got != tt.wrongApp {
				t.Errorf("errors.Is(%v, ErrWrongAppID) = %v, want %v", err, got, tt.wrongApp)
			}
			if errors.Is(err, wechat.ErrBadSignature) {
				t.Errorf("an envelope error wraps ErrBadSignature: %v", err)
			}
			// The text names the check that failed (for logs); callers branch on errors.Is.
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("error %q does not mention %q", err, tt.wantIn)
			}
			envelopeNoLeak(t, "error", err.Error(), envelopeTestKey)
		})
	}
}

// envelopeFlip flips one bit of a ciphertext byte (which garbles the
// plaintext block it belongs to and one bit of the next).
func envelopeFlip(t testing.TB, encrypted string, i int) string {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(encrypted)
	if err != nil {
		t.Fatal(err)
	}
	raw[i] ^= 0x01
	return base64.StdEncoding.EncodeToString(raw)
}

func TestNewCipher(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		key    string
		appID  string
		wantIn string // "" = valid
	}{
		{name: "valid", key: envelopeTestKey, appID: envelopeTestAppID},
		{name: "42 characters", key: envelopeTestKey[:42], appID: envelopeTestAppID, wantIn: "43 characters"},
		{name: "44 characters", key: envelopeTestKey + "A", appID: envelopeTestAppID, wantIn: "43 characters"},
		{name: "padded 44 characters", key: envelopeTestKey + "=", appID: envelopeTestAppID, wantIn: "43 characters"},
		{name: "empty", key: "", appID: envelopeTestAppID, wantIn: "43 characters"},
		{name: "not base64", key: "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF!", appID: envelopeTestAppID, wantIn: "not 43 characters of base64"},
		{name: "padding inside", key: "abcdefghijklmnopqrstuvwxyz0123456789ABCD=FG", appID: envelopeTestAppID, wantIn: "not 43 characters of base64"},
		{name: "line break inside", key: "abcdefghijklmnopqrstuvwxyz0123456789ABCD\nFG", appID: envelopeTestAppID, wantIn: "not 43 characters of base64"},
		{name: "url-safe alphabet", key: "abcdefghijklmnopqrstuvwxyz0123456789ABCD-_G", appID: envelopeTestAppID, wantIn: "not 43 characters of base64"},
		{name: "empty appid", key: envelopeTestKey, appID: "", wantIn: "appid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := wechat.NewCipher(tt.key, tt.appID)
			if tt.wantIn == "" {
				if err != nil || c == nil {
					t.Fatalf("NewCipher = %v, %v", c, err)
				}
				return
			}
			if err == nil {
				t.Fatal("NewCipher accepted the key")
			}
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("error %q does not mention %q", err, tt.wantIn)
			}
			if tt.key != "" && strings.Contains(err.Error(), tt.key) {
				t.Errorf("error contains the key: %q", err)
			}
			envelopeNoLeak(t, "error", err.Error(), envelopeTestKey)
		})
	}

	// The 43rd character carries 2 spare bits, which the official samples'
	// lenient base64 decoders ignore: "…G" and "…H" are the same key.
	t.Run("spare bits ignored", func(t *testing.T) {
		t.Parallel()
		odd, err := wechat.NewCipher(envelopeTestKey[:42]+"H", envelopeTestAppID)
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := envelopeTestCipher(t).Seal([]byte("hi"))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := odd.Open(sealed); err != nil || string(got) != "hi" {
			t.Errorf("Open = %q, %v", got, err)
		}
	})
}

// envelopeSigned is a callback as WeChat sends it: sealed with one
// generation's key and signed with one generation's token.
type envelopeSigned struct {
	encrypt, signature string
}

const (
	envelopeTS    = "1409735669"
	envelopeNonce = "1320562132"
)

func envelopeSign(t testing.TB, token, aesKey string, msg []byte) envelopeSigned {
	t.Helper()
	c, err := wechat.NewCipher(aesKey, envelopeTestAppID)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := c.Seal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return envelopeSigned{enc, wechat.Signature(token, envelopeTS, envelopeNonce, enc)}
}

func TestKeyringRotation(t *testing.T) {
	t.Parallel()
	var (
		keyA, keyB, keyC = aesTestKeyFrom("A"), aesTestKeyFrom("B"), aesTestKeyFrom("C")
		cur              = wechat.CallbackKeys{Token: "tokenA", AESKey: keyA}
		prev             = wechat.CallbackKeys{Token: "tokenB", AESKey: keyB}
		msg              = []byte(callbackBody("<MsgID>200163836</MsgID>", callbackStatus))
	)
	tests := []struct {
		name        string
		current     wechat.CallbackKeys
		previous    *wechat.CallbackKeys
		token, key  string // what the callback was signed and sealed with
		wantErr     error  // nil = opens
		wantNotErr  error
		wantPlainOK bool // VerifyPlain(signature over token, ts, nonce)
	}{
		{name: "current generation", current: cur, previous: &prev, token: "tokenA", key: keyA, wantPlainOK: true},
		{name: "previous generation", current: cur, previous: &prev, token: "tokenB", key: keyB, wantPlainOK: true},
		{name: "unrelated generation", current: cur, previous: &prev, token: "tokenC", key: keyC, wantErr: wechat.ErrBadSignature},
		{name: "previous generation dropped", current: cur, token: "tokenB", key: keyB, wantErr: wechat.ErrBadSignature},
		{name: "key-only rotation: old key, same token", current: cur, previous: &wechat.CallbackKeys{Token: "tokenA", AESKey: keyB}, token: "tokenA", key: keyB, wantPlainOK: true},
		{name: "key-only rotation: new key, same token", current: cur, previous: &wechat.CallbackKeys{Token: "tokenA", AESKey: keyB}, token: "tokenA", key: keyA, wantPlainOK: true},
		{name: "token-only rotation: old token", current: cur, previous: &wechat.CallbackKeys{Token: "tokenB", AESKey: keyA}, token: "tokenB", key: keyA, wantPlainOK: true},
		{name: "signed with the current token, sealed with an unrelated key", current: cur, previous: &prev, token: "tokenA", key: keyC, wantErr: wechat.ErrBadEnvelope, wantNotErr: wechat.ErrBadSignature, wantPlainOK: true},
		{name: "previous generation in plaintext mode", current: cur, previous: &wechat.CallbackKeys{Token: "tokenB"}, token: "tokenB", key: keyB, wantErr: wechat.ErrBadSignature, wantPlainOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := wechat.NewKeyring(envelopeTestAppID, tt.current, tt.previous)
			if err != nil {
				t.Fatal(err)
			}
			cb := envelopeSign(t, tt.token, tt.key, msg)
			for _, op := range []struct {
				name string
				open func(sig, ts, nonce, enc string) ([]byte, error)
			}{{"OpenEncrypted", k.OpenEncrypted}, {"EchoEncrypted", k.EchoEncrypted}} {
				got, err := op.open(cb.signature, envelopeTS, envelopeNonce, cb.encrypt)
				switch {
				case tt.wantErr == nil && (err != nil || !bytes.Equal(got, msg)):
					t.Errorf("%s = %q, %v; want the message", op.name, got, err)
				case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
					t.Errorf("%s: err = %v, want %v", op.name, err, tt.wantErr)
				case tt.wantNotErr != nil && errors.Is(err, tt.wantNotErr):
					t.Errorf("%s: err = %v, must not be %v", op.name, err, tt.wantNotErr)
				}
				if err != nil {
					envelopeNoLeak(t, "error", err.Error(), keyA, keyB, keyC)
					for _, tok := range []string{"tokenA", "tokenB", "tokenC"} {
						if strings.Contains(err.Error(), tok) {
							t.Errorf("error contains a token: %v", err)
						}
					}
				}
			}
			// A tampered signature never opens, whichever generation signed.
			if _, err := k.OpenEncrypted(strings.Repeat("0", 40), envelopeTS, envelopeNonce, cb.encrypt); !errors.Is(err, wechat.ErrBadSignature) {
				t.Errorf("forged msg_signature: err = %v, want ErrBadSignature", err)
			}
			plainSig := wechat.Signature(tt.token, envelopeTS, envelopeNonce)
			if got := k.VerifyPlain(plainSig, envelopeTS, envelopeNonce); got != tt.wantPlainOK {
				t.Errorf("VerifyPlain = %v, want %v", got, tt.wantPlainOK)
			}
			if k.VerifyPlain(plainSig, envelopeTS, envelopeNonce+"1") {
				t.Error("VerifyPlain accepted a signature over another nonce")
			}
			if k.VerifyPlain(strings.ToUpper(plainSig), envelopeTS, envelopeNonce) {
				t.Error("VerifyPlain accepted uppercase hex")
			}
		})
	}
}

func TestNewKeyring(t *testing.T) {
	t.Parallel()
	good := wechat.CallbackKeys{Token: "tokenGood1", AESKey: envelopeTestKey}
	badKey := "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF!"
	tests := []struct {
		name     string
		appID    string
		current  wechat.CallbackKeys
		previous *wechat.CallbackKeys
		wantIn   string // "" = valid
	}{
		{name: "current only", appID: envelopeTestAppID, current: good},
		{name: "with previous", appID: envelopeTestAppID, current: good, previous: &wechat.CallbackKeys{Token: "tokenOld99", AESKey: aesTestKeyFrom("old")}},
		{name: "plaintext mode", appID: envelopeTestAppID, current: wechat.CallbackKeys{Token: "tokenGood1"}},
		{name: "empty appid", appID: "", current: good, wantIn: "appid"},
		{name: "empty current token", appID: envelopeTestAppID, current: wechat.CallbackKeys{AESKey: envelopeTestKey}, wantIn: "current token"},
		{name: "bad current key", appID: envelopeTestAppID, current: wechat.CallbackKeys{Token: "tokenGood1", AESKey: badKey}, wantIn: "current"},
		{name: "short current key", appID: envelopeTestAppID, current: wechat.CallbackKeys{Token: "tokenGood1", AESKey: envelopeTestKey[:42]}, wantIn: "43 characters"},
		{name: "empty previous token", appID: envelopeTestAppID, current: good, previous: &wechat.CallbackKeys{AESKey: envelopeTestKey}, wantIn: "previous token"},
		{name: "bad previous key", appID: envelopeTestAppID, current: good, previous: &wechat.CallbackKeys{Token: "tokenOld99", AESKey: badKey}, wantIn: "previous"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := wechat.NewKeyring(tt.appID, tt.current, tt.previous)
			if tt.wantIn == "" {
				if err != nil || k == nil {
					t.Fatalf("NewKeyring = %v, %v", k, err)
				}
				return
			}
			if err == nil {
				t.Fatal("NewKeyring accepted the keys")
			}
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("error %q does not mention %q", err, tt.wantIn)
			}
			for _, s := range []string{"tokenGood1", "tokenOld99", badKey} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error contains a secret: %q", err)
				}
			}
			envelopeNoLeak(t, "error", err.Error(), envelopeTestKey)
		})
	}
}

func TestKeyringEncryptedReply(t *testing.T) {
	t.Parallel()
	k, err := wechat.NewKeyring(envelopeTestAppID,
		wechat.CallbackKeys{Token: "pamtest", AESKey: envelopeTestKey},
		&wechat.CallbackKeys{Token: "oldtoken", AESKey: aesTestKeyFrom("old")})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("<xml><Content><![CDATA[]]>]]></Content></xml>")
	tests := []struct {
		name      string
		timestamp string
		nonce     string
		wantIn    string // "" = valid
	}{
		{name: "digits", timestamp: "1409304348", nonce: "1320562132"},
		{name: "letters in the nonce", timestamp: "1409304348", nonce: "xxxxxx-Y_z"},
		{name: "empty timestamp", timestamp: "", nonce: "1", wantIn: "timestamp"},
		{name: "timestamp not digits", timestamp: "14e9", nonce: "1", wantIn: "timestamp"},
		{name: "empty nonce", timestamp: "1", nonce: "", wantIn: "nonce"},
		{name: "CDATA break-out in the nonce", timestamp: "1", nonce: "]]><Evil/><![CDATA[", wantIn: "nonce"},
		{name: "space in the nonce", timestamp: "1", nonce: "a b", wantIn: "nonce"},
		{name: "nonce too long", timestamp: "1", nonce: strings.Repeat("n", 65), wantIn: "nonce"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reply, err := k.EncryptedReply(msg, tt.timestamp, tt.nonce)
			if tt.wantIn != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantIn) {
					t.Fatalf("EncryptedReply = %s, %v; want an error about %s", reply, err, tt.wantIn)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			f := envelopeXMLFields(t, reply)
			if f["TimeStamp"] != tt.timestamp || f["Nonce"] != tt.nonce {
				t.Errorf("reply carries TimeStamp %q, Nonce %q", f["TimeStamp"], f["Nonce"])
			}
			got, err := k.OpenEncrypted(f["MsgSignature"], f["TimeStamp"], f["Nonce"], f["Encrypt"])
			if err != nil || !bytes.Equal(got, msg) {
				t.Errorf("reply does not open: %q, %v", got, err)
			}
			// The callback parser reads the same Encrypt field.
			ev, err := wechat.ParseEvent(reply)
			if err != nil || ev.Encrypt != f["Encrypt"] {
				t.Errorf("ParseEvent(reply) = %+v, %v", ev, err)
			}
			again, _ := k.EncryptedReply(msg, tt.timestamp, tt.nonce)
			if bytes.Equal(again, reply) {
				t.Error("two replies used the same random bytes")
			}
		})
	}

	t.Run("plaintext-mode current generation", func(t *testing.T) {
		t.Parallel()
		plain, err := wechat.NewKeyring(envelopeTestAppID, wechat.CallbackKeys{Token: "pamtest"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := plain.EncryptedReply(msg, "1", "1"); err == nil {
			t.Error("EncryptedReply without an EncodingAESKey succeeded")
		}
	})
}

func TestKeyringCallbackKeysRedacted(t *testing.T) {
	t.Parallel()
	const token = "tokenSecret42"
	keys := wechat.CallbackKeys{Token: token, AESKey: envelopeTestKey}
	k, err := wechat.NewKeyring(envelopeTestAppID, keys, &keys)
	if err != nil {
		t.Fatal(err)
	}
	c := envelopeTestCipher(t)
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "keys", keys, "keyring", k, "cipher", c)
	var text bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("x", "keys", keys, "keyring", *k, "cipher", *c)
	js, err := json.Marshal(struct{ K wechat.CallbackKeys }{keys})
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"keys %v":      fmt.Sprintf("%v", keys),
		"keys %+v":     fmt.Sprintf("%+v", keys),
		"keys %#v":     fmt.Sprintf("%#v", keys),
		"&keys %+v":    fmt.Sprintf("%+v", &keys),
		"keyring %v":   fmt.Sprintf("%v", k),
		"*keyring %+v": fmt.Sprintf("%+v", *k),
		"*keyring %#v": fmt.Sprintf("%#v", *k),
		"cipher %v":    fmt.Sprintf("%v", c),
		"*cipher %+v":  fmt.Sprintf("%+v", *c),
		"*cipher %#v":  fmt.Sprintf("%#v", *c),
		"json":         string(js),
		"slog json":    logged.String(),
		"slog text":    text.String(),
	}
	iv := hex.EncodeToString(aesTestKey(t, envelopeTestKey)[:16])
	for name, out := range outputs {
		if strings.Contains(out, token) {
			t.Errorf("%s printed the token: %q", name, out)
		}
		if strings.Contains(out, iv) {
			t.Errorf("%s printed the IV: %q", name, out)
		}
		envelopeNoLeak(t, name, out, envelopeTestKey)
	}
}

// FuzzOpenEnvelope feeds Open two kinds of input: the fuzzer's string as a
// base64 Encrypt field, and the fuzzer's bytes as a plaintext encrypted under
// the test key (random ciphertext almost never survives the padding check,
// so this is how the length and appid checks get explored). Open must never
// panic, every error must wrap ErrBadEnvelope without leaking the key, and
// whatever opens must survive a Seal/Open round trip — byte for byte when the
// envelope was canonical (padded to 32 as Seal does).
func FuzzOpenEnvelope(f *testing.F) {
	c := envelopeTestCipher(f)
	key := aesTestKey(f, envelopeTestKey)
	f.Fuzz(func(t *testing.T, encrypted string, plaintext []byte) {
		if msg, err := c.Open(encrypted); err != nil {
			envelopeCheckOpenErr(t, msg, err)
		} else {
			raw, err := base64.StdEncoding.DecodeString(encrypted)
			if err != nil {
				t.Fatalf("Open accepted what base64 refuses: %v", err)
			}
			envelopeCheckRoundTrip(t, c, key, raw, msg)
		}

		if len(plaintext) > envelopeMaxDecoded {
			plaintext = plaintext[:envelopeMaxDecoded]
		}
		pt := append(bytes.Clone(plaintext), make([]byte, (16-len(plaintext)%16)%16)...)
		raw := aesTestCBC(key, pt, true)
		msg, err := c.Open(base64.StdEncoding.EncodeToString(raw))
		if err != nil {
			envelopeCheckOpenErr(t, msg, err)
			return
		}
		envelopeCheckRoundTrip(t, c, key, raw, msg)
	})
}

func envelopeCheckOpenErr(t *testing.T, msg []byte, err error) {
	t.Helper()
	if msg != nil {
		t.Fatalf("Open returned %d bytes with an error", len(msg))
	}
	if !errors.Is(err, wechat.ErrBadEnvelope) {
		t.Fatalf("error does not wrap ErrBadEnvelope: %v", err)
	}
	envelopeNoLeak(t, "error", err.Error(), envelopeTestKey)
}

// envelopeCheckRoundTrip reseals msg with the random bytes of the envelope
// raw it came from and checks that the result opens to msg and, when it has
// raw's length (raw was padded as Seal pads), equals raw.
func envelopeCheckRoundTrip(t *testing.T, c *wechat.Cipher, key, raw, msg []byte) {
	t.Helper()
	pt := aesTestCBC(key, raw, false)
	sealed, err := c.SealWithRandom(msg, [16]byte(pt[:16]))
	if err != nil {
		t.Fatalf("Seal refused a message Open returned: %v", err)
	}
	got, err := c.Open(sealed)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Open(Seal(Open(x))) = %q, %v; want %q", envelopeShort(got), err, envelopeShort(msg))
	}
	resealed, _ := base64.StdEncoding.DecodeString(sealed)
	if len(resealed)%32 != 0 {
		t.Fatalf("Seal produced %d bytes, not a multiple of 32", len(resealed))
	}
	if len(resealed) == len(raw) && !bytes.Equal(resealed, raw) {
		t.Fatalf("Seal(Open(x)) differs from the canonical envelope x")
	}
}

// Zero values are programmer errors, but they answer with errors, not panics.
func TestCipherKeyringZeroValues(t *testing.T) {
	t.Parallel()
	var c wechat.Cipher
	if _, err := c.Open("jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="); err == nil {
		t.Error("zero Cipher opened an envelope")
	}
	if _, err := c.Seal([]byte("x")); err == nil {
		t.Error("zero Cipher sealed")
	}
	var k wechat.Keyring
	if k.VerifyPlain(wechat.Signature("", "1", "2"), "1", "2") {
		t.Error("zero Keyring verified a signature")
	}
	if _, err := k.OpenEncrypted(wechat.Signature("", "1", "2", "x"), "1", "2", "x"); !errors.Is(err, wechat.ErrBadSignature) {
		t.Errorf("zero Keyring OpenEncrypted: err = %v, want ErrBadSignature", err)
	}
	if _, err := k.EncryptedReply([]byte("x"), "1", "2"); err == nil {
		t.Error("zero Keyring built a reply")
	}
}
