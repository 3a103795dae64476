package wechat

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"unicode"
	"unicode/utf8"
)

// tplAPIList names the template list call in errors and metric labels.
const tplAPIList = "template/list"

// Template is one of an app's private templates (wechat-protocol.md §4).
type Template struct {
	ID              string `json:"template_id"`
	Title           string `json:"title"`
	PrimaryIndustry string `json:"primary_industry"`
	DeputyIndustry  string `json:"deputy_industry"`
	// Content holds the {{key.DATA}} placeholders; their keys are exactly the
	// keys a send's data must provide.
	Content string `json:"content"`
	Example string `json:"example"`
}

type tplListReply struct {
	replyStatus
	// A pointer, so that a reply without the field is told apart from an
	// account that has no templates.
	TemplateList *[]Template `json:"template_list"`
}

func (r *tplListReply) validate() error {
	if r.TemplateList == nil {
		return errors.New("reply without template_list")
	}
	for i, t := range *r.TemplateList {
		if t.ID == "" {
			return fmt.Errorf("template_list[%d] has no template_id", i)
		}
	}
	return nil
}

// PrivateTemplates lists the app's private templates from
// /cgi-bin/template/get_all_private_template. The call has a daily quota of its
// own: cache the result (package templates does), never call it per send.
func (c *Client) PrivateTemplates(ctx context.Context, accessToken string) ([]Template, error) {
	var reply tplListReply
	path := "/cgi-bin/template/get_all_private_template?access_token=" + url.QueryEscape(accessToken)
	if err := c.call(ctx, tplAPIList, http.MethodGet, path, nil, &reply); err != nil {
		return nil, err
	}
	return *reply.TemplateList, nil
}

// tplPlaceholderRE matches {{key.DATA}}; WeChat tolerates spaces inside the braces.
var tplPlaceholderRE = regexp.MustCompile(`\{\{\s*([A-Za-z0-9_]+)\.DATA\s*\}\}`)

// Keys returns the keys of the {{key.DATA}} placeholders in Content, sorted and
// without repeats: the keys a send's data must provide.
func (t Template) Keys() []string {
	var keys []string
	for _, m := range tplPlaceholderRE.FindAllStringSubmatch(t.Content, -1) {
		keys = append(keys, m[1])
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// tplCategoryKeyRE splits a category key into its type and index: thing1,
// character_string12. The lazy prefix keeps a digit-free type name whole.
var tplCategoryKeyRE = regexp.MustCompile(`^([a-z_]+?)([0-9]+)$`)

// tplCategoryLimits are the value limits of category template keys, in
// characters (runes). name has a second, tighter limit for Chinese values.
var tplCategoryLimits = map[string]int{
	"thing":            20,
	"character_string": 32,
	"phone_number":     17,
	"car_number":       8,
	"phrase":           5,
	"number":           32,
	"letter":           32,
	"symbol":           5,
	"name":             20,
}

// tplNameChineseLimit: a name is at most 10 Chinese or 20 letters; WeChat
// counts a mixed name as Chinese.
const tplNameChineseLimit = 10

// CheckValue checks a data value against the length limit of its key's
// category (wechat-protocol.md §2): category keys are a type plus an index
// (thing1, time2). Keys of old industry templates (first, keyword1, remark) and
// free keys (User) have no documented limit and are not checked. It returns ""
// when the value is fine, else why not, e.g. "thing values are at most 20
// characters (got 23)".
func CheckValue(key, value string) string {
	m := tplCategoryKeyRE.FindStringSubmatch(key)
	if m == nil {
		return ""
	}
	kind := m[1]
	limit, ok := tplCategoryLimits[kind]
	if !ok {
		return ""
	}
	n := utf8.RuneCountInString(value)
	if kind == "name" && n > tplNameChineseLimit && tplHasHan(value) {
		return fmt.Sprintf("name values are at most %d characters when they contain Chinese (got %d)", tplNameChineseLimit, n)
	}
	if n > limit {
		return fmt.Sprintf("%s values are at most %d characters (got %d)", kind, limit, n)
	}
	return ""
}

func tplHasHan(s string) bool {
	for _, r := range s {
		if unicode.Is(unicode.Han, r) {
			return true
		}
	}
	return false
}
