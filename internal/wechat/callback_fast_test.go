package wechat

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// fastSeeds are the shapes the fast path must take, and near misses it must
// leave to encoding/xml.
var fastSeeds = []string{
	"<xml>\n<ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>\n<FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>\n" +
		"<CreateTime>1395658920</CreateTime>\n<MsgType><![CDATA[event]]></MsgType>\n<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>\n" +
		"<MsgID>200163836</MsgID>\n<Status><![CDATA[failed: system failed]]></Status>\n</xml>",
	"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[bG9yZW0=]]></Encrypt></xml>",
	"<xml><CreateTime> 12 </CreateTime></xml>",
	"<xml><CreateTime> </CreateTime></xml>",
	"<xml><CreateTime></CreateTime><Other>x &gt; y</Other></xml>",
	"<xml><Status>a > b</Status></xml>",
	"<xml><Status>a\r\nb</Status></xml>",
	"<xml><Status><![CDATA[a]]]]><![CDATA[>b]]></Status></xml>",
	"<xml><MsgID>1</MsgID><MsgID>2</MsgID></xml>",
	"<xml><Event>x</Event><xml>y</xml></xml>",
	"<?xml version=\"1.0\"?><xml><Event>x</Event></xml>",
	"<xml><Event a=\"1\">x</Event></xml>",
	"<xml><Event>x</Event></xml>\n\n",
	"<xml><Event>x</Event></xml><xml></xml>",
	"<xml><SubscribeMsgSentEvent><List><MsgID>1</MsgID></List></SubscribeMsgSentEvent></xml>",
	"<xml><Event>\x01</Event></xml>",
	"<xml><Event>\xff</Event></xml>",
}

// TestFastEventTakesWeChatsShape: the events WeChat and the simulator send go
// the fast way.
func TestFastEventTakesWeChatsShape(t *testing.T) {
	for _, name := range []string{"callback-system-failed.xml", "callback-user-block.xml"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := fastEvent(b); !ok {
			t.Errorf("%s: the fast path refused WeChat's own sample", name)
		}
	}
	if _, ok := fastEvent([]byte(fastSeeds[0])); !ok {
		t.Error("the fast path refused the simulator's shape")
	}
	for _, s := range []string{fastSeeds[6], fastSeeds[8], fastSeeds[10], fastSeeds[11], fastSeeds[14]} {
		if _, ok := fastEvent([]byte(s)); ok {
			t.Errorf("the fast path took %q, which encoding/xml must judge", s)
		}
	}
}

// FuzzFastEvent: whatever the fast path accepts, encoding/xml accepts too and
// decodes to the same event.
func FuzzFastEvent(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.xml"))
	for _, name := range files {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := fastEvent(body)
		if !ok {
			return
		}
		slow, err := decodeEvent(body)
		if err != nil {
			t.Fatalf("fast path accepted what encoding/xml refuses (%v): %q", err, body)
		}
		if !reflect.DeepEqual(fast, *slow) {
			t.Fatalf("fast path read %+v, encoding/xml %+v: %q", fast, *slow, body)
		}
	})
}

// BenchmarkParseEvent compares the fast path with encoding/xml on the
// simulator's event (go test -bench ParseEvent ./internal/wechat).
func BenchmarkParseEvent(b *testing.B) {
	body := []byte(fastSeeds[0])
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			if _, err := ParseEvent(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-xml", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodeEvent(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
