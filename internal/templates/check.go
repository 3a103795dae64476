package templates

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/wxpush/wxpush/internal/wechat"
)

// Problem codes.
const (
	CodeUnknownTemplate = "unknown_template"
	CodeMissingKeys     = "missing_keys"
	CodeUnknownKey      = "unknown_key"
	CodeValueTooLong    = "value_too_long"
)

// Problem is why a message would be refused by WeChat, in terms of the request:
// Field is "template_id", "data", "data.<key>" or "data.<key>.value" (the last
// matches the field WeChat's 47003 names).
type Problem struct {
	Field   string `json:"field"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Check validates a message against the app's templates and returns the first
// problem found, checking in this order: the template id, keys the data lacks
// (all named), keys the template does not have, then each value's category limit,
// keys in sorted order. It returns (nil, nil) for a good message and (nil, err)
// with err wrapping ErrUnavailable when no list could be had: the caller should
// send anyway and let WeChat's 40037 or 47003 settle it.
func (c *Cache) Check(ctx context.Context, app, templateID string, data map[string]string) (*Problem, error) {
	if templateID == "" {
		return &Problem{Field: "template_id", Code: CodeUnknownTemplate, Message: "template_id is required"}, nil
	}
	e, err := c.load(ctx, app, c.cfg.TTL, true)
	if err != nil {
		return nil, err
	}
	t, ok := findTemplate(e.Templates, templateID)
	if !ok && c.age(e) >= c.cfg.MinRefresh {
		// The template may have been added since the list was fetched. If the
		// refetch fails we cannot tell, so fail open rather than refuse it.
		if e, err = c.load(ctx, app, c.cfg.MinRefresh, false); err != nil {
			return nil, err
		}
		t, ok = findTemplate(e.Templates, templateID)
	}
	if !ok {
		return &Problem{
			Field:   "template_id",
			Code:    CodeUnknownTemplate,
			Message: fmt.Sprintf("template %q is not one of the %d templates of app %s", templateID, len(e.Templates), app),
		}, nil
	}
	return checkData(t, data), nil
}

func findTemplate(list []wechat.Template, id string) (wechat.Template, bool) {
	i := slices.IndexFunc(list, func(t wechat.Template) bool { return t.ID == id })
	if i < 0 {
		return wechat.Template{}, false
	}
	return list[i], true
}

// checkData checks data against the placeholders of t.
func checkData(t wechat.Template, data map[string]string) *Problem {
	want := t.Keys()
	var missing []string
	for _, k := range want {
		if _, ok := data[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return &Problem{
			Field:   "data",
			Code:    CodeMissingKeys,
			Message: fmt.Sprintf("data lacks %s, required by template %q", strings.Join(missing, ", "), t.ID),
		}
	}
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if _, found := slices.BinarySearch(want, k); !found {
			return &Problem{
				Field:   "data." + k,
				Code:    CodeUnknownKey,
				Message: fmt.Sprintf("template %q has no placeholder %q; its keys are %s", t.ID, k, strings.Join(want, ", ")),
			}
		}
	}
	for _, k := range keys {
		if reason := wechat.CheckValue(k, data[k]); reason != "" {
			return &Problem{Field: "data." + k + ".value", Code: CodeValueTooLong, Message: reason}
		}
	}
	return nil
}
