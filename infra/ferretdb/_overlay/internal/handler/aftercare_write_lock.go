// Aftercare patch (copied into FerretDB's internal/handler by infra/localinfra.py at build time;
// the leading underscore of the _overlay directory keeps the go tool from building it in place).
//
// FerretDB 1.24 runs update, findAndModify and delete as "query the documents, change them in Go,
// write them back" with nothing held between the read and the write, so two concurrent $inc on
// one document could both read 5 and both write 6 (200 concurrent $inc ended at 20). Every
// command that writes a collection now holds that collection's lock from its read to its last
// write, which makes each single-document read-modify-write atomic as on MongoDB: $inc, $push,
// $pullAll, conditional updates (a filter on status matched by exactly one of many racers),
// findAndModify with upsert (a second upsert finds the first one's document instead of failing on
// the unique index), and delete_one (two racers never both report the same document deleted).
// Inserts take the same lock so that an upsert and an insert of one key behave as on MongoDB.
//
// Reads take no lock: they see each write whole, since every write is one SQLite transaction.
// Writes to different collections still run side by side (SQLite then serialises the commits).
package handler

import "sync"

// collectionWriteLocks maps "<database>\x00<collection>" to its *sync.Mutex.
var collectionWriteLocks sync.Map

// lockCollectionWrites takes the write lock of one collection and returns its release.
func lockCollectionWrites(db, collection string) (unlock func()) {
	v, _ := collectionWriteLocks.LoadOrStore(db+"\x00"+collection, new(sync.Mutex))
	mu := v.(*sync.Mutex)
	mu.Lock()

	return mu.Unlock
}
