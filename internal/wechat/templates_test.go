package wechat_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/wxpush/wxpush/internal/wechat"
	"github.com/wxpush/wxpush/internal/wechat/wechatsim"
)

const (
	tplTestAppID  = "wxtpltestapp"
	tplTestSecret = "SECRET-CANARY-tpl-5e1d"
	// The seed article's card-payment template.
	tplTestSeedContent = "{{User.DATA}}，您好：\n您尾号{{CardNumber.DATA}}的卡于{{Date.DATA}}{{Type.DATA}}{{Money.DATA}}。\n" +
		"截至{{DeadTime.DATA}}，可用余额{{Left.DATA}}。"
)

var tplTestTemplates = []wechat.Template{
	{
		ID:              "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
		Title:           "信用卡消费提醒",
		PrimaryIndustry: "金融业",
		DeputyIndustry:  "银行",
		Content:         tplTestSeedContent,
		Example:         "黄先生，您好：…",
	},
	{
		ID:              "category-tpl-1",
		Title:           "预约成功通知",
		PrimaryIndustry: "IT科技",
		DeputyIndustry:  "互联网|电子商务",
		Content:         "预约项目：{{thing1.DATA}}\n预约时间：{{time2.DATA}}",
	},
}

// tplTestSim starts a simulator serving tplTestTemplates and returns its URL.
func tplTestSim(t *testing.T) string {
	t.Helper()
	cfg := wechatsim.Config{Apps: []wechatsim.App{{AppID: tplTestAppID, Secret: tplTestSecret, Token: "callbacktoken"}}}
	for _, tpl := range tplTestTemplates {
		cfg.Templates = append(cfg.Templates, wechatsim.Template{
			AppID: tplTestAppID, TemplateID: tpl.ID, Title: tpl.Title, Content: tpl.Content,
			PrimaryIndustry: tpl.PrimaryIndustry, DeputyIndustry: tpl.DeputyIndustry, Example: tpl.Example,
		})
	}
	sim, err := wechatsim.New(cfg)
	if err != nil {
		t.Fatalf("wechatsim.New: %v", err)
	}
	t.Cleanup(sim.Close)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestTemplateKeys(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []string
	}{
		{name: "seed template", content: tplTestSeedContent, want: []string{"CardNumber", "Date", "DeadTime", "Left", "Money", "Type", "User"}},
		{name: "category template", content: "{{thing1.DATA}}{{time2.DATA}}", want: []string{"thing1", "time2"}},
		{name: "industry template", content: "{{first.DATA}}\n卡号：{{keyword1.DATA}}\n{{remark.DATA}}", want: []string{"first", "keyword1", "remark"}},
		{name: "repeats and spaces", content: "{{ thing1.DATA }} {{thing1.DATA}} {{amount2.DATA}}", want: []string{"amount2", "thing1"}},
		{name: "not placeholders", content: "{{thing1}} {thing2.DATA} {{thing3.data}} {{.DATA}}", want: nil},
		{name: "empty", content: "", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := wechat.Template{Content: tt.content}.Keys()
			if len(got) == 0 && len(tt.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Keys() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCheckValue(t *testing.T) {
	han := func(n int) string { return strings.Repeat("中", n) }
	latin := func(n int) string { return strings.Repeat("a", n) }
	digits := func(n int) string { return strings.Repeat("7", n) }
	tests := []struct {
		name  string
		key   string
		value string
		want  string // "" = fine
	}{
		{name: "thing 20 Chinese", key: "thing1", value: han(20)},
		{name: "thing 21 Chinese", key: "thing1", value: han(21), want: "thing values are at most 20 characters (got 21)"},
		{name: "thing 23 letters", key: "thing12", value: latin(23), want: "thing values are at most 20 characters (got 23)"},
		{name: "character_string 32", key: "character_string3", value: latin(32)},
		{name: "character_string 33", key: "character_string3", value: latin(33), want: "character_string values are at most 32 characters (got 33)"},
		{name: "phone_number 17", key: "phone_number4", value: digits(17)},
		{name: "phone_number 18", key: "phone_number4", value: digits(18), want: "phone_number values are at most 17 characters (got 18)"},
		{name: "car_number 8", key: "car_number5", value: "粤B12345A"},
		{name: "car_number 9", key: "car_number5", value: "粤B12345AB", want: "car_number values are at most 8 characters (got 9)"},
		{name: "phrase 5 Chinese", key: "phrase6", value: han(5)},
		{name: "phrase 6 Chinese", key: "phrase6", value: han(6), want: "phrase values are at most 5 characters (got 6)"},
		{name: "number 32", key: "number7", value: digits(32)},
		{name: "number 33", key: "number7", value: digits(33), want: "number values are at most 32 characters (got 33)"},
		{name: "letter 32", key: "letter8", value: latin(32)},
		{name: "letter 33", key: "letter8", value: latin(33), want: "letter values are at most 32 characters (got 33)"},
		{name: "symbol 5", key: "symbol9", value: "%%%%%"},
		{name: "symbol 6", key: "symbol9", value: "%%%%%%", want: "symbol values are at most 5 characters (got 6)"},
		{name: "name 10 Chinese", key: "name10", value: han(10)},
		{name: "name 11 Chinese", key: "name10", value: han(11), want: "name values are at most 10 characters when they contain Chinese (got 11)"},
		{name: "name 20 letters", key: "name10", value: latin(20)},
		{name: "name 21 letters", key: "name10", value: latin(21), want: "name values are at most 20 characters (got 21)"},
		{name: "name mixed counts as Chinese", key: "name10", value: "张" + latin(10), want: "name values are at most 10 characters when they contain Chinese (got 11)"},
		{name: "empty value", key: "thing1", value: ""},
		{name: "industry first", key: "first", value: latin(200)},
		{name: "industry keyword", key: "keyword1", value: latin(200)},
		{name: "industry remark", key: "remark", value: latin(200)},
		{name: "free key", key: "User", value: han(50)},
		{name: "unlimited category", key: "time2", value: latin(100)},
		{name: "type without index", key: "thing", value: latin(100)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := wechat.CheckValue(tt.key, tt.value); got != tt.want {
				t.Errorf("CheckValue(%q, %d runes) = %q, want %q", tt.key, len([]rune(tt.value)), got, tt.want)
			}
		})
	}
}

func TestPrivateTemplates(t *testing.T) {
	ctx := context.Background()
	base := tplTestSim(t)
	c := wechat.NewClient(base)
	tok, err := c.FetchToken(ctx, tplTestAppID, tplTestSecret)
	if err != nil {
		t.Fatalf("FetchToken: %v", err)
	}
	got, err := c.PrivateTemplates(ctx, tok.Value)
	if err != nil {
		t.Fatalf("PrivateTemplates: %v", err)
	}
	if !reflect.DeepEqual(got, tplTestTemplates) {
		t.Errorf("PrivateTemplates = %+v\nwant %+v", got, tplTestTemplates)
	}
}

func TestPrivateTemplatesErrors(t *testing.T) {
	const canary = "TOKEN-CANARY-tpl-8c2b"
	fake := func(status int, body string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	tests := []struct {
		name     string
		base     string
		wantCode int    // >0: an *APIError with this errcode
		wantHTTP int    // an *TransportError with this status (0: none)
		wantText string // in the error text
	}{
		{name: "invalid token", base: tplTestSim(t), wantCode: 40001},
		{name: "unreachable", base: closed.URL, wantText: "template/list"},
		{name: "http 500", base: fake(http.StatusInternalServerError, ""), wantHTTP: http.StatusInternalServerError},
		{name: "not JSON", base: fake(http.StatusOK, "<html>"), wantText: "decode reply"},
		{name: "no template_list", base: fake(http.StatusOK, `{}`), wantText: "reply without template_list"},
		{name: "template without id", base: fake(http.StatusOK, `{"template_list":[{"title":"x"}]}`), wantText: "template_list[0] has no template_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list, err := wechat.NewClient(tt.base).PrivateTemplates(context.Background(), canary)
			if err == nil {
				t.Fatalf("PrivateTemplates = %v, nil; want an error", list)
			}
			if strings.Contains(err.Error(), canary) {
				t.Errorf("error text leaks the token: %v", err)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not contain %q", err, tt.wantText)
			}
			var apiErr *wechat.APIError
			var trErr *wechat.TransportError
			switch {
			case tt.wantCode != 0:
				if !errors.As(err, &apiErr) || apiErr.Code != tt.wantCode || apiErr.API != "template/list" {
					t.Errorf("error = %#v, want *APIError{API: template/list, Code: %d}", err, tt.wantCode)
				}
			default:
				if !errors.As(err, &trErr) || trErr.API != "template/list" || trErr.StatusCode != tt.wantHTTP {
					t.Errorf("error = %#v, want *TransportError{API: template/list, StatusCode: %d}", err, tt.wantHTTP)
				}
			}
		})
	}
}

// The simulator rejects over-long values with 47003, and CheckValue must not
// let through what it refuses (nor refuse category values it takes, except
// where the documented rules are stricter: see CheckValue).
func TestCheckValueAgreesWithSimulator(t *testing.T) {
	ctx := context.Background()
	c := wechat.NewClient(tplTestSim(t))
	tok, err := c.FetchToken(ctx, tplTestAppID, tplTestSecret)
	if err != nil {
		t.Fatalf("FetchToken: %v", err)
	}
	tests := []struct {
		name  string
		value string
	}{
		{name: "20 Chinese", value: strings.Repeat("中", 20)},
		{name: "21 Chinese", value: strings.Repeat("中", 21)},
		{name: "20 letters", value: strings.Repeat("a", 20)},
		{name: "21 letters", value: strings.Repeat("a", 21)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.SendTemplate(ctx, tok.Value, &wechat.TemplateMessage{
				ToUser:     "openid-tpl",
				TemplateID: "category-tpl-1",
				Data:       map[string]wechat.DataItem{"thing1": {Value: tt.value}, "time2": {Value: "2024-01-01 10:00"}},
			})
			var apiErr *wechat.APIError
			simRefused := errors.As(err, &apiErr) && apiErr.Code == 47003
			if err != nil && !simRefused {
				t.Fatalf("SendTemplate: %v", err)
			}
			weRefuse := wechat.CheckValue("thing1", tt.value) != ""
			if simRefused != weRefuse {
				t.Errorf("simulator refused = %v, CheckValue refused = %v", simRefused, weRefuse)
			}
		})
	}
}
