// Aftercare patch (copied into FerretDB's internal/backends/sqlite by infra/localinfra.py at
// build time).
//
// FerretDB 1.24 on SQLite hands SQLite a filter only when it is a lone _id equality; every other
// query reads the whole table and filters in Go, although create_index made SQLite indexes on
// `_ferretdb_sjson->"field"`. This puts equalities (`{f: v}`, `{f: {$eq: v}}`, `{f: {$in: [...]}}`)
// on top-level indexed fields into the SQL WHERE clause in the indexes' own expressions, so SQLite
// answers them from the index. FerretDB still applies the whole filter in Go afterwards; the SQL
// only has to return every document the filter could match, never fewer.
//
// That is why only values whose stored JSON text is unique to them are pushed: strings,
// ObjectIDs, booleans and integers (an integral double is stored as the same digits; zero also
// as "-0"). MongoDB's equality also matches an array that contains the value, which an index on
// the field's whole JSON text cannot see. So a field is pushed only while no document holds an
// array in it, which a partial index per indexed field answers with one probe (it holds only
// such documents; created beside every index, see metadata/aftercare_array_indexes.go). A field
// that holds arrays somewhere (e.g. a list of e-mail message ids) is filtered in Go as before.
package sqlite

import (
	"context"
	"fmt"
	"strings"

	"github.com/FerretDB/FerretDB/internal/backends/sqlite/metadata"
	"github.com/FerretDB/FerretDB/internal/handler/sjson"
	"github.com/FerretDB/FerretDB/internal/types"
	"github.com/FerretDB/FerretDB/internal/util/fsql"
)

// aftercareMaxIn bounds the values of one pushed $in.
const aftercareMaxIn = 100

// aftercarePushdown returns the SQL that selects a superset of the documents filter matches,
// using the collection's indexes, or ok=false when nothing of filter can be pushed.
func aftercarePushdown(ctx context.Context, db *fsql.DB, meta *metadata.Collection, selectClause string, filter *types.Document) (q string, args []any, ok bool) { //nolint:lll // for readability
	if filter == nil || filter.Len() == 0 || meta.Capped() {
		return "", nil, false
	}

	indexed := map[string]bool{}
	for _, index := range meta.Settings.Indexes {
		for _, key := range index.Key {
			if !strings.Contains(key.Field, ".") {
				indexed[key.Field] = true
			}
		}
	}

	type pushed struct {
		field string
		texts []string
	}

	var candidates []pushed

	for _, field := range filter.Keys() {
		if !indexed[field] || strings.HasPrefix(field, "$") {
			continue
		}

		if texts, pushable := aftercarePushableValues(aftercareValue(filter.Get(field))); pushable {
			candidates = append(candidates, pushed{field: field, texts: texts})
		}
	}

	if len(candidates) == 0 {
		return "", nil, false
	}

	// Which candidate fields hold an array in some document (one probe of each field's partial
	// index, see aftercare_array_indexes.go)? Those are left to FerretDB's own filtering.
	//
	// Never _id: it cannot hold an array, and it has no partial index, so its probe was a full
	// read of the table evaluating JSON on every row (80 ms at 20,000 documents, growing with
	// the table) for every query naming _id with another field or with $in: the services'
	// processed-event checks, read-model and run writes guarded by a revision. In a 2,000-incident
	// fault run that made each write to the notifier's read model take seconds.
	probes := make([]string, len(candidates))
	var asked []int

	for i, c := range candidates {
		if c.field != "_id" {
			probes[i] = aftercareAnyArray(meta.TableName, c.field)
			asked = append(asked, i)
		}
	}

	holdsArray := make([]bool, len(candidates))

	if len(asked) > 0 {
		selects := make([]string, len(asked))
		dest := make([]any, len(asked))

		for j, i := range asked {
			selects[j] = probes[i]
			dest[j] = &holdsArray[i]
		}

		if err := db.QueryRowContext(ctx, "SELECT "+strings.Join(selects, ", ")).Scan(dest...); err != nil {
			return "", nil, false // the plain full read is always correct
		}
	}

	var conds, guards []string

	for i, c := range candidates {
		if holdsArray[i] {
			continue
		}

		placeholders := make([]string, len(c.texts))

		for j, text := range c.texts {
			placeholders[j] = "?"
			args = append(args, text)
		}

		conds = append(conds, fmt.Sprintf("%s IN (%s)", aftercareFieldExpr(c.field), strings.Join(placeholders, ", ")))

		if c.field != "_id" { // _id is never an array
			guards = append(guards, probes[i])
		}
	}

	if len(conds) == 0 {
		return "", nil, false
	}

	where := strings.Join(conds, " AND ")
	if len(guards) == 0 {
		return selectClause + " WHERE " + where, args, true
	}

	// A write between the probe and this statement may have put an array into a pushed field:
	// then the second branch, the full read, answers instead (one statement, one snapshot).
	anyArray := "(" + strings.Join(guards, " OR ") + ")"
	q = selectClause + " WHERE " + where + " AND NOT " + anyArray +
		" UNION ALL " + selectClause + " WHERE " + anyArray

	return q, args, true
}

// aftercareValue returns v, ignoring an error that cannot happen (the key was taken from the document).
func aftercareValue(v any, _ error) any {
	return v
}

// aftercarePushableValues returns the stored JSON texts a document's field may have if it
// equals value, or false if value is not of a type whose equality can be pushed.
func aftercarePushableValues(value any) ([]string, bool) {
	if doc, isDoc := value.(*types.Document); isDoc {
		if doc.Len() != 1 {
			return nil, false
		}

		if eq, err := doc.Get("$eq"); err == nil {
			return aftercareScalarTexts(eq)
		}

		in, err := doc.Get("$in")
		if err != nil {
			return nil, false
		}

		arr, isArr := in.(*types.Array)
		if !isArr || arr.Len() == 0 || arr.Len() > aftercareMaxIn {
			return nil, false
		}

		var texts []string

		for i := 0; i < arr.Len(); i++ {
			v, _ := arr.Get(i)

			t, ok := aftercareScalarTexts(v)
			if !ok {
				return nil, false
			}

			texts = append(texts, t...)
		}

		return texts, true
	}

	return aftercareScalarTexts(value)
}

// aftercareScalarTexts returns the stored JSON texts that equal the scalar value.
func aftercareScalarTexts(value any) ([]string, bool) {
	switch v := value.(type) {
	case string, types.ObjectID, bool:
		b, err := sjson.MarshalSingleValue(v)
		if err != nil {
			return nil, false
		}

		return []string{string(b)}, true
	case int32:
		return aftercareIntegerTexts(int64(v)), true
	case int64:
		return aftercareIntegerTexts(v), true
	default:
		return nil, false
	}
}

// aftercareIntegerTexts: int32, int64 and integral doubles are all stored as their digits;
// a double zero may be stored as "-0".
func aftercareIntegerTexts(v int64) []string {
	if v == 0 {
		return []string{"0", "-0"}
	}

	return []string{fmt.Sprint(v)}
}

// aftercareFieldExpr is the expression FerretDB's index creation uses for a top-level field;
// SQLite uses an index only for the same text.
func aftercareFieldExpr(field string) string {
	return metadata.AftercareFieldExpr(field)
}

// aftercareAnyArray is an SQL expression, true when some document holds an array in field; the
// WHERE clause is the one of the field's partial index (metadata.AftercareArrayCondition).
func aftercareAnyArray(table, field string) string {
	return fmt.Sprintf("EXISTS (SELECT 1 FROM %q WHERE %s)", table, metadata.AftercareArrayCondition(field))
}
