// Aftercare patch (copied into FerretDB's internal/backends/sqlite/metadata by
// infra/localinfra.py at build time).
//
// Beside every index, a partial index per top-level key field holding only the documents in which
// that field is an array. It is empty for fields that never hold arrays, so asking "does any
// document hold an array here?" costs one empty index probe; the query pushdown
// (../aftercare_pushdown.go) pushes a field's equality into SQL only while the answer is no.
package metadata

import (
	"context"
	"fmt"
	"strings"

	"github.com/FerretDB/FerretDB/internal/util/fsql"
	"github.com/FerretDB/FerretDB/internal/util/lazyerrors"
)

// AftercareFieldExpr is the expression index creation uses for a top-level field
// (indexesCreate: `DefaultColumn->"field"`); SQLite uses an index only for the same text.
func AftercareFieldExpr(field string) string {
	return fmt.Sprintf("%s->%q", DefaultColumn, field)
}

// AftercareArrayCondition is the WHERE clause of the partial index of the documents whose field
// is an array; a query uses that index only when it states the same condition.
func AftercareArrayCondition(field string) string {
	return fmt.Sprintf("json_type(%s) = 'array'", AftercareFieldExpr(field))
}

// aftercareCreateArrayIndexes creates the array partial indexes for the key fields of indexes
// that lack them; it runs on every createIndexes, so a store whose indexes predate the patch
// gets them when a service next ensures its indexes at start-up.
func aftercareCreateArrayIndexes(ctx context.Context, db *fsql.DB, tableName string, indexes []IndexInfo) error {
	for _, index := range indexes {
		for _, key := range index.Key {
			if key.Field == "_id" || strings.Contains(key.Field, ".") {
				continue
			}

			q := fmt.Sprintf(
				"CREATE INDEX IF NOT EXISTS %q ON %q (%s) WHERE %s",
				tableName+"_aftercare_arrays_"+key.Field,
				tableName,
				AftercareFieldExpr(key.Field),
				AftercareArrayCondition(key.Field),
			)
			if _, err := db.ExecContext(ctx, q); err != nil {
				return lazyerrors.Error(err)
			}
		}
	}

	return nil
}
