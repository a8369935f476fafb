// Command aftercare-store runs FerretDB embedded with its SQLite backend, so the project gets a
// MongoDB wire-protocol endpoint from the Go module proxy alone (no mongod is reachable here).
//
// `go install .../cmd/ferretdb` builds but panics at start because it wants a version file that
// only FerretDB's own repository has; embedding the library avoids that.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "host:port to accept MongoDB clients on")
	dataDir := flag.String("data", "", "directory for the SQLite files (one per database); created if missing")
	logLevel := flag.String("log-level", "warn", "debug, info, warn or error (info logs every connection)")
	flag.Parse()

	if *dataDir == "" {
		log.Fatal("aftercare-store: -data is required (a directory for the SQLite files)")
	}
	abs, err := filepath.Abs(*dataDir)
	if err != nil {
		log.Fatalf("aftercare-store: cannot resolve -data %q: %v", *dataDir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		log.Fatalf("aftercare-store: cannot create -data %q: %v", abs, err)
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		log.Fatalf("aftercare-store: -log-level %q: %v", *logLevel, err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// FerretDB's SQLite URL must be a file: URL naming an existing directory with a trailing slash.
	//
	// synchronous(normal): FerretDB runs SQLite in WAL mode, whose default (full) syncs the WAL to
	// disk at every commit: 2.1 ms per commit on these machines, paid by every write in turn (one
	// writer per database file), which capped each service's writes at a few hundred a second.
	// With normal, a commit is durable across a crash or kill -9 of the store (the WAL is in the
	// operating system's hands), and only a power loss or kernel crash can take back the last
	// commits. That is MongoDB's own default: a w:1 write is acknowledged before its journal is
	// synced (storage.journal.commitIntervalMs, 100 ms).
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/?_pragma=synchronous(normal)",
	})
	if err != nil {
		log.Fatalf("aftercare-store: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	fmt.Fprintf(os.Stderr, "aftercare-store: FerretDB (sqlite) listening on %s, data in %s\n", *listen, abs)
	f.Run(ctx)
	fmt.Fprintln(os.Stderr, "aftercare-store: stopped")
}
