#!/usr/bin/env python3
"""Local infrastructure for Aftercare: a real Kafka broker and a MongoDB-compatible store.

There is no Docker engine on the machines this project is developed and tested on, so the
project starts real parts itself (see shared INFRA.md):

* Apache Kafka 4.x, one node in KRaft combined mode, from Maven Central jars, run with Java 17;
* FerretDB 1.24 embedded in a small Go program (``infra/ferretdb``) with its SQLite backend;
* Mailpit, a mail catcher with a web inbox, built from the Go module proxy: the demo customer's
  inbox in ``make run`` and an SMTP server that counts mail in end-to-end tests.

Standard library only: this runs before any Python package is installed.

    python3 infra/localinfra.py setup        fetch the Kafka jars, build the store and Mailpit (cached)
    python3 infra/localinfra.py setup-inbox  build Mailpit with its web inbox (npm; for make run)
    python3 infra/localinfra.py up           start both in the background and wait until ready
    python3 infra/localinfra.py down         stop what ``up`` started
    python3 infra/localinfra.py status       say what runs where
    python3 infra/localinfra.py run-kafka    run the broker in the foreground (for make run)
    python3 infra/localinfra.py run-store    run the store in the foreground (for make run)
    python3 infra/localinfra.py run-mailcatcher  run Mailpit in the foreground (for make run)

Addresses come from AFTERCARE_KAFKA_HOST/AFTERCARE_KAFKA_PORT (127.0.0.1:9092, controller on
port+1), AFTERCARE_STORE_HOST/AFTERCARE_STORE_PORT (127.0.0.1:27017) and
AFTERCARE_MAILCATCHER_SMTP_PORT/AFTERCARE_MAILCATCHER_HTTP_PORT (1025, web inbox on 8025). Everything it writes
(jars, binary, data, logs) lives under AFTERCARE_LOCAL_DIR (``.local/`` at the repository root).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = REPO_ROOT / "infra"
KAFKA_POM = INFRA_DIR / "kafka" / "pom.xml"
STORE_SOURCE_DIR = INFRA_DIR / "ferretdb"

KAFKA_READY_TIMEOUT_S = 120.0
STORE_READY_TIMEOUT_S = 60.0


class InfraError(RuntimeError):
    """A problem the person running the infrastructure has to act on; the message says how."""


def local_dir() -> Path:
    return Path(os.environ.get("AFTERCARE_LOCAL_DIR", REPO_ROOT / ".local")).resolve()


def _log(message: str) -> None:
    print(f"[infra] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Fetch and build (cached by a digest of the inputs, so a second run takes seconds)
# --------------------------------------------------------------------------------------------


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def kafka_libs_dir() -> Path:
    return local_dir() / "cache" / f"kafka-{_digest(KAFKA_POM)}" / "libs"


def store_binary(patches: tuple[str, ...] | None = None) -> Path:
    """Where the store built with the named FERRETDB_PATCHES (all of them by default) lives."""
    names = tuple(FERRETDB_PATCHES) if patches is None else patches
    inputs = [*sorted(STORE_SOURCE_DIR.glob("*.go")), STORE_SOURCE_DIR / "go.mod", STORE_SOURCE_DIR / "go.sum"]
    # A changed patch must rebuild too: its edits and its overlay files are part of the key.
    key = hashlib.sha256()
    for name in names:
        key.update(repr((name, FERRETDB_PATCHES[name].edits)).encode())
        for relative in FERRETDB_PATCHES[name].files:
            key.update(relative.encode() + (STORE_OVERLAY_DIR / relative).read_bytes())
    variant = "" if patches is None else "-only-" + "+".join(names or ("none",))
    return local_dir() / "cache" / f"store-{_digest(*inputs)}-{key.hexdigest()[:8]}{variant}" / "aftercare-store"


def _require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InfraError(f"'{name}' is not on PATH; it is needed to {why}. Install it and retry.")
    return path


def fetch_kafka() -> Path:
    libs = kafka_libs_dir()
    done = libs.parent / "complete"
    if done.exists():
        return libs
    mvn = _require_tool("mvn", "download the Kafka broker jars from Maven Central")
    _require_tool("java", "run the Kafka broker (Java 17 or newer)")
    _log(f"downloading Kafka broker jars into {libs} (first run only)")
    if libs.exists():
        shutil.rmtree(libs)
    log_file = libs.parent / "mvn.log"
    libs.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as out:
        result = subprocess.run(
            [
                mvn,
                "-B",
                "-f",
                str(KAFKA_POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        raise InfraError(f"downloading the Kafka jars failed (exit {result.returncode}); see {log_file}")
    done.write_text("ok\n")
    return libs


@dataclass(frozen=True)
class FerretDBPatch:
    """One change to FerretDB's source: text edits ``(file, before, after)`` and whole files
    copied from ``infra/ferretdb/_overlay/`` to the same path in the module."""

    why: str
    edits: tuple[tuple[str, str, str], ...] = ()
    files: tuple[str, ...] = ()


FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.2"
STORE_OVERLAY_DIR = STORE_SOURCE_DIR / "_overlay"

# Each command that writes a collection takes that collection's lock first (the lock itself and
# why: _overlay/internal/handler/aftercare_write_lock.go). The lock is released by a defer when
# the command's function returns, i.e. after its last write.
_LOCK = "\tdefer lockCollectionWrites(params.DB, params.Collection)()\n\n"

FERRETDB_PATCHES: dict[str, FerretDBPatch] = {
    # FerretDB 1.24's SQLite backend creates the _id index on `_ferretdb_sjson->"_id"` but looks up
    # `_id` with `_ferretdb_sjson->'$._id'`; SQLite matches index expressions by their text, so
    # every lookup by _id scanned the whole table (27 ms at 10k documents, 100 ms at 50k).
    "id-index": FerretDBPatch(
        why="lookups by _id use the _id index",
        edits=(
            (
                "internal/backends/sqlite/metadata/metadata.go",
                "IDColumn = DefaultColumn + \"->'$._id'\"",
                'IDColumn = DefaultColumn + `->"_id"`',
            ),
        ),
    ),
    # Single-document read-modify-write is atomic: FerretDB reads, changes in Go and writes back
    # with nothing held in between, so concurrent $inc on one document lost most increments.
    "atomic-writes": FerretDBPatch(
        why="update, findAndModify, delete and insert hold their collection's write lock",
        files=("internal/handler/aftercare_write_lock.go",),
        edits=(
            (
                "internal/handler/msg_update.go",
                "(int32, int32, *types.Array, error) {\n",
                "(int32, int32, *types.Array, error) {\n" + _LOCK,
            ),
            (
                "internal/handler/msg_findandmodify.go",
                "(*findAndModifyResult, error) {\n",
                "(*findAndModifyResult, error) {\n" + _LOCK,
            ),
            (
                "internal/handler/msg_delete.go",
                "\tvar deleted int32\n",
                _LOCK + "\tvar deleted int32\n",
            ),
            (
                "internal/handler/msg_insert.go",
                "\tdocsIter := params.Docs.Iterator()\n",
                _LOCK + "\tdocsIter := params.Docs.Iterator()\n",
            ),
        ),
    ),
    # An update command closes each statement's query when that statement is done. FerretDB 1.24
    # defers every close to the end of the whole command, so a bulk write of more than ~100
    # matching updates held all 100 of the database's connections and waited for a 101st:
    # that database hung for good (seen: a consumer counting a redelivered batch in one bulk write).
    "update-closes-each-statement": FerretDBPatch(
        why="an update command releases each statement's query before the next statement",
        edits=(
            (
                "internal/handler/msg_update.go",
                "\t\tcloser := iterator.NewMultiCloser()\n\t\tdefer closer.Close()\n",
                "\t\tcloser := iterator.NewMultiCloser()\n",
            ),
            (
                "internal/handler/msg_update.go",
                '\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n',
                '\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n\t\tcloser.Close()\n',
            ),
        ),
    ),
    # Equalities on indexed fields are answered from the indexes create_index made: FerretDB hands
    # SQLite only a lone _id equality and filters everything else in Go over a full read, so a
    # tenant's incident by number took a scan of every tenant's incidents.
    "index-pushdown": FerretDBPatch(
        why="equalities on top-level indexed fields are pushed into SQL, in the indexes' expressions",
        files=(
            "internal/backends/sqlite/aftercare_pushdown.go",
            "internal/backends/sqlite/metadata/aftercare_array_indexes.go",
        ),
        edits=(
            (
                "internal/backends/sqlite/metadata/registry.go",
                "\tcreated := make([]string, 0, len(indexes))\n",
                "\tcreated := make([]string, 0, len(indexes))\n\n"
                "\tall := append(slices.Clone(c.Settings.Indexes), indexes...)\n"
                "\tif err := aftercareCreateArrayIndexes(ctx, db, c.TableName, all); err != nil {\n"
                "\t\treturn lazyerrors.Error(err)\n"
                "\t}\n",
            ),
            (
                "internal/backends/sqlite/collection.go",
                "\tq += whereClause\n\tq += prepareOrderByClause(params.Sort)\n",
                '\tif whereClause == "" && params.Sort.Len() == 0 && params.Limit == 0 && !params.OnlyRecordIDs {\n'
                "\t\tif pushed, pushedArgs, ok := aftercarePushdown(ctx, db, meta, q, params.Filter); ok {\n"
                "\t\t\tq, args = pushed, pushedArgs\n"
                "\t\t}\n"
                "\t}\n\n"
                "\tq += whereClause\n\tq += prepareOrderByClause(params.Sort)\n",
            ),
            (
                "internal/backends/sqlite/collection.go",
                "\tq := `EXPLAIN QUERY PLAN ` + selectClause + whereClause + orderByClause\n",
                "\tq := `EXPLAIN QUERY PLAN ` + selectClause + whereClause + orderByClause\n\n"
                '\tif whereClause == "" && orderByClause == "" && params.Limit == 0 {\n'
                "\t\tif pushed, pushedArgs, ok := aftercarePushdown(ctx, db, meta, selectClause, params.Filter); ok {\n"
                "\t\t\tq, args, filterPushdown = `EXPLAIN QUERY PLAN `+pushed, pushedArgs, true\n"
                "\t\t}\n"
                "\t}\n",
            ),
        ),
    ),
    # Per-statement overhead nobody reads: fsql formatted each statement's debug-log attributes
    # (the document JSON among them) with debug lines off, and every connection, transaction and
    # rows object was tracked for leaks in a pprof profile (a stack trace each, and a finalizer
    # that panics the store if one is not closed). Together ~15 % of the store's CPU (perf, triage
    # bench); why in detail: _overlay/internal/util/fsql/aftercare_quiet_log.go.
    "no-per-statement-bookkeeping": FerretDBPatch(
        why="no debug-log formatting with debug off, no leak tracking of connections and rows",
        files=("internal/util/fsql/aftercare_quiet_log.go",),
        edits=(
            (
                "internal/util/fsql/db.go",
                "\t\tl:                logging.WithName(l, name),\n",
                "\t\tl:                aftercareQuiet(logging.WithName(l, name)),\n",
            ),
            (
                "internal/util/resource/resource.go",
                "func Track(obj any, token *Token) {\n\tcheckArgs(obj, token)\n",
                "func Track(obj any, token *Token) {\n\tcheckArgs(obj, token)\n\n"
                "\tif aftercareUntracked {\n\t\treturn\n\t}\n",
            ),
            (
                "internal/util/resource/resource.go",
                "func Untrack(obj any, token *Token) {\n\tcheckArgs(obj, token)\n",
                "func Untrack(obj any, token *Token) {\n\tcheckArgs(obj, token)\n\n"
                "\tif aftercareUntracked {\n\t\treturn\n\t}\n",
            ),
            (
                "internal/util/resource/resource.go",
                "// profilesM protects access to profiles.\n",
                "// aftercareUntracked: Track and Untrack do nothing (Aftercare patch, see localinfra.py).\n"
                "const aftercareUntracked = true\n\n"
                "// profilesM protects access to profiles.\n",
            ),
        ),
    ),
}


def _patched_ferretdb(go: str, workdir: Path, env: dict[str, str], out: Any, patches: tuple[str, ...]) -> Path:
    """A copy of the FerretDB module from the module cache with the named patches applied."""
    downloaded = subprocess.run(
        [go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"],
        cwd=STORE_SOURCE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if downloaded.returncode != 0:
        out.write(downloaded.stdout + downloaded.stderr)
        raise InfraError("downloading FerretDB from the Go module proxy failed; see the build log")
    source = Path(json.loads(downloaded.stdout)["Dir"])
    target = workdir / "ferretdb-patched"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    for name in patches:
        patch = FERRETDB_PATCHES[name]
        for relative in patch.files:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(STORE_OVERLAY_DIR / relative, target / relative)
        for relative, before, after in patch.edits:
            path = target / relative
            path.chmod(0o644)
            text = path.read_text()
            if text.count(before) != 1:
                raise InfraError(
                    f"the FerretDB patch {name!r} no longer applies to {relative} "
                    f"(expected the text once, found it {text.count(before)} times); review FERRETDB_PATCHES"
                )
            path.write_text(text.replace(before, after))
    return target


def build_store(patches: tuple[str, ...] | None = None) -> Path:
    """Build (once, then cached) the store with the named FERRETDB_PATCHES, all by default.

    Benchmarks build variants without some patches to measure what a patch costs or saves."""
    binary = store_binary(patches)
    if binary.exists():
        return binary
    go = _require_tool("go", "build the FerretDB-based store from the Go module proxy")
    _log(f"building the FerretDB store into {binary} (first run only, about a minute)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    log_file = binary.parent / "go-build.log"
    env = dict(os.environ, CGO_ENABLED="0")
    with log_file.open("w") as out:
        names = tuple(FERRETDB_PATCHES) if patches is None else patches
        patched = _patched_ferretdb(go, binary.parent, env, out, names)
        # Build with a copy of go.mod that replaces FerretDB by the patched copy; the committed
        # go.mod stays plain so `go` commands in infra/ferretdb keep working without the copy.
        modfile = binary.parent / "go.mod"
        modfile.write_text((STORE_SOURCE_DIR / "go.mod").read_text() + f"\nreplace {FERRETDB_MODULE} => {patched}\n")
        shutil.copyfile(STORE_SOURCE_DIR / "go.sum", binary.parent / "go.sum")
        result = subprocess.run(
            [go, "build", f"-modfile={modfile}", "-mod=mod", "-tags", "ferretdb_no_postgresql", "-o", str(binary), "."],
            cwd=STORE_SOURCE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        raise InfraError(f"building the store failed (exit {result.returncode}); see {log_file}")
    return binary


MAILCATCHER_MODULE = "github.com/axllent/mailpit"
MAILCATCHER_VERSION = "v1.33.1"


def mailcatcher_binary() -> Path:
    return local_dir() / "cache" / f"mailpit-{MAILCATCHER_VERSION}" / "mailpit"


def build_mailcatcher() -> Path:
    """Build Mailpit (once, then cached) with ``go install``: pure Go, about two minutes."""
    binary = mailcatcher_binary()
    if binary.exists():
        return binary
    go = _require_tool("go", "build the Mailpit mail catcher from the Go module proxy")
    _log(f"building the Mailpit mail catcher into {binary} (first run only, about two minutes)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    log_file = binary.parent / "go-install.log"
    env = dict(os.environ, CGO_ENABLED="0", GOBIN=str(binary.parent))
    with log_file.open("w") as out:
        result = subprocess.run(
            [go, "install", f"{MAILCATCHER_MODULE}@{MAILCATCHER_VERSION}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0 or not binary.exists():
        raise InfraError(f"building Mailpit failed (exit {result.returncode}); see {log_file}")
    return binary


# Mailpit's web inbox is a JavaScript bundle that its releases build with npm; the Go module
# holds only its sources (`server/ui/dist` is empty), so `go install` gives a Mailpit whose SMTP
# and API work but whose page at :8025 is blank. `make run` is for people reading that page, so
# it builds the bundle once (npm, a few minutes) into a second binary; tests only use the API and
# keep the plain build. Two changes make the npm step work from the registries this project can
# reach: the lock file pins `sass-embedded` 1.108.1, which is not served, so the versions are
# resolved afresh; and `rapidoc` (only the API-documentation page) ^12 is not served, ^9.3.8 is.
MAILCATCHER_INBOX_PACKAGE_PINS = {"rapidoc": "^9.3.8"}


def mailcatcher_inbox_binary() -> Path:
    return local_dir() / "cache" / f"mailpit-{MAILCATCHER_VERSION}-inbox" / "mailpit"


def build_mailcatcher_inbox() -> Path | None:
    """Build Mailpit with its web inbox (once, then cached); None, with the reason logged, where
    npm is missing or the build fails: the plain build then serves the API and SMTP only."""
    binary = mailcatcher_inbox_binary()
    if binary.exists():
        return binary
    if shutil.which("npm") is None:
        _log("npm is not on PATH: Mailpit runs without its web inbox (install npm and run make run again to get it)")
        return None
    go = _require_tool("go", "build the Mailpit mail catcher from the Go module proxy")
    work = binary.parent
    source = work / "src"
    log_file = work / "build.log"
    _log(f"building Mailpit's web inbox into {binary} (first make run only, a few minutes; log {log_file})")
    shutil.rmtree(source, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CGO_ENABLED="0")
    with log_file.open("w") as out:

        def run(command: list[str], cwd: Path) -> bool:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            return (
                subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
                == 0
            )

        found = subprocess.run(
            [go, "mod", "download", "-json", f"{MAILCATCHER_MODULE}@{MAILCATCHER_VERSION}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if found.returncode != 0:
            out.write(found.stdout + found.stderr)
            _log(f"Mailpit's sources could not be downloaded; running without the web inbox (see {log_file})")
            return None
        # The module cache is read-only: build in a writable copy.
        shutil.copytree(json.loads(found.stdout)["Dir"], source)
        for path in source.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        package_file = source / "package.json"
        package = json.loads(package_file.read_text())
        package["dependencies"].update(MAILCATCHER_INBOX_PACKAGE_PINS)
        package_file.write_text(json.dumps(package, indent=2))
        (source / "package-lock.json").unlink(missing_ok=True)
        built = (
            # No install scripts: they fetch browsers for Mailpit's own UI tests, not needed here.
            run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts"], source)
            and run(["npm", "run", "build"], source)
            and run([go, "build", "-o", str(binary), "."], source)
        )
    if not built or not binary.exists():
        _log(f"building Mailpit's web inbox failed; running without it (see {log_file})")
        return None
    shutil.rmtree(source, ignore_errors=True)  # node_modules alone is a few hundred MB
    return binary


def setup() -> None:
    fetch_kafka()
    build_store()
    build_mailcatcher()


# --------------------------------------------------------------------------------------------
# Readiness probes
# --------------------------------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _tcp_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _bson_cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def _mongo_ping(host: str, port: int) -> bool:
    """Send ``{ping: 1, $db: "admin"}`` as an OP_MSG and check for ``ok: 1``.

    Hand-rolled so this script needs no PyMongo; the BSON is two fields long.
    """
    body = (
        b"\x10"
        + _bson_cstring("ping")
        + struct.pack("<i", 1)
        + b"\x02"
        + _bson_cstring("$db")
        + struct.pack("<i", 6)
        + b"admin\x00"
    )
    document = struct.pack("<i", len(body) + 5) + body + b"\x00"
    payload = struct.pack("<I", 0) + b"\x00" + document  # flagBits, section kind 0
    header = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013)  # OP_MSG
    try:
        with socket.create_connection((host, port), timeout=2.0) as conn:
            conn.sendall(header + payload)
            reply = conn.recv(65536)
    except OSError:
        return False
    # ok is a double 1.0 in the reply document.
    return b"\x01ok\x00" + struct.pack("<d", 1.0) in reply


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log yet)"


def _wait_ready(name: str, proc: subprocess.Popen[bytes] | None, ready, timeout_s: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InfraError(
                f"{name} exited with code {proc.returncode} while starting; see {log_file}:\n{_tail(log_file)}"
            )
        if ready():
            return
        time.sleep(0.25)
    raise InfraError(f"{name} was not ready after {timeout_s:.0f}s; see {log_file}:\n{_tail(log_file)}")


# --------------------------------------------------------------------------------------------
# The two servers
# --------------------------------------------------------------------------------------------


@dataclass
class KafkaNode:
    """One Kafka broker in KRaft combined mode (broker and controller in one process)."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "kafka.out"

    def _write_config(self) -> Path:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str((self.data_dir / "data").resolve()),
            # A single node cannot satisfy the multi-node defaults.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Services create their topics explicitly (partitions, compaction); a typo in a topic
            # name should fail loudly instead of silently creating a new topic.
            "auto.create.topics.enable": "false",
            "num.partitions": "3",
            "log.retention.hours": "168",
        }
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {logs / 'server.log'}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "appender.out.type = Console\n"
            "appender.out.name = STDOUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRefs = file, out\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            "rootLogger.appenderRef.out.ref = STDOUT\n"
            "rootLogger.appenderRef.out.level = WARN\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
            "logger.apache.name = org.apache.kafka\nlogger.apache.level = WARN\n"
        )
        return config

    def _java(self, main_class: str, *args: str) -> list[str]:
        java = _require_tool("java", "run the Kafka broker (Java 17 or newer)")
        return [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
            "-cp",
            f"{fetch_kafka()}/*",
            main_class,
            *args,
        ]

    def prepare(self) -> list[str]:
        """Write the config, format the log dir once, and return the broker's command line."""
        for port in (self.port, self.controller_port):
            if not port_is_free(self.host, port):
                raise InfraError(
                    f"Kafka cannot listen on {self.host}:{port}: the port is already in use. "
                    "Stop whatever holds it (another `make run`?) or choose other ports with "
                    "AFTERCARE_KAFKA_PORT (the controller takes the next port)."
                )
        config = self._write_config()
        if not (self.data_dir / "data" / "meta.properties").exists():
            cluster_id = (
                subprocess.run(
                    self._java("kafka.tools.StorageTool", "random-uuid"),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            formatted = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config), "--standalone", "-g"
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if formatted.returncode != 0:
                raise InfraError(f"formatting the Kafka log dir failed:\n{formatted.stdout}{formatted.stderr}")
        return self._java("kafka.Kafka", str(config))

    def start(self, timeout_s: float = KAFKA_READY_TIMEOUT_S) -> None:
        command = self.prepare()
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = KAFKA_READY_TIMEOUT_S) -> None:
        # The broker opens its client port only once it can serve requests.
        _wait_ready(
            f"Kafka on {self.bootstrap_servers}",
            self.process,
            lambda: _tcp_accepts(self.host, self.port),
            timeout_s,
            self.log_file,
        )

    def stop(self, timeout_s: float = 60.0) -> None:
        _stop_process(self.process, timeout_s)
        self.process = None


@dataclass
class StoreNode:
    """FerretDB with its SQLite backend: the MongoDB wire-protocol store."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 27017
    # Which FERRETDB_PATCHES to build with; None means all (benchmarks compare variants).
    patches: tuple[str, ...] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "store.out"

    def prepare(self) -> list[str]:
        if not port_is_free(self.host, self.port):
            raise InfraError(
                f"the store cannot listen on {self.host}:{self.port}: the port is already in use. "
                "Stop whatever holds it (a local mongod? another `make run`?) or choose another "
                "port with AFTERCARE_STORE_PORT."
            )
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        return [
            str(build_store(self.patches)),
            "-listen",
            f"{self.host}:{self.port}",
            "-data",
            str((self.data_dir / "data").resolve()),
        ]

    def start(self, timeout_s: float = STORE_READY_TIMEOUT_S) -> None:
        command = self.prepare()
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = STORE_READY_TIMEOUT_S) -> None:
        _wait_ready(
            f"the store on {self.host}:{self.port}",
            self.process,
            lambda: _mongo_ping(self.host, self.port),
            timeout_s,
            self.log_file,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        _stop_process(self.process, timeout_s)
        self.process = None


@dataclass
class MailCatcherNode:
    """Mailpit: accepts any mail on its SMTP port and shows it in a web inbox and an HTTP API
    (``GET /api/v1/messages``)."""

    data_dir: Path
    host: str = "127.0.0.1"
    smtp_port: int = 1025
    http_port: int = 8025
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def inbox_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "mailpit.out"

    def binary(self) -> Path:
        """The build with the web inbox where ``make run`` made one, else the plain build."""
        inbox = mailcatcher_inbox_binary()
        return inbox if inbox.exists() else build_mailcatcher()

    def prepare(self) -> list[str]:
        for port, setting in ((self.smtp_port, "SMTP_PORT"), (self.http_port, "HTTP_PORT")):
            if not port_is_free(self.host, port):
                raise InfraError(
                    f"the mail catcher cannot listen on {self.host}:{port}: the port is already in use. "
                    f"Stop whatever holds it or choose another port with AFTERCARE_MAILCATCHER_{setting}."
                )
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        return [
            str(self.binary()),
            "--smtp",
            f"{self.host}:{self.smtp_port}",
            "--listen",
            f"{self.host}:{self.http_port}",
            "--database",
            str((self.data_dir / "mailpit.db").resolve()),
            # Keep every message: Mailpit keeps only the newest 500 by default, and the fault run
            # counts the "resolved" email of each of its 2,000 incidents in this inbox (with 500 it
            # could never find them all, nor tell one from two).
            "--max",
            "0",
            # Offline machines: no update check, no reverse DNS of each sender.
            "--disable-version-check",
            "--smtp-disable-rdns",
        ]

    def start(self, timeout_s: float = STORE_READY_TIMEOUT_S) -> None:
        command = self.prepare()
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = STORE_READY_TIMEOUT_S) -> None:
        _wait_ready(
            f"the mail catcher on {self.host}:{self.smtp_port}",
            self.process,
            lambda: _tcp_accepts(self.host, self.smtp_port) and _tcp_accepts(self.host, self.http_port),
            timeout_s,
            self.log_file,
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        _stop_process(self.process, timeout_s)
        self.process = None


def default_mailcatcher(base: Path | None = None) -> MailCatcherNode:
    return MailCatcherNode(
        data_dir=(base or local_dir() / "run") / "mailpit",
        smtp_port=int(os.environ.get("AFTERCARE_MAILCATCHER_SMTP_PORT", "1025")),
        http_port=int(os.environ.get("AFTERCARE_MAILCATCHER_HTTP_PORT", "8025")),
    )


def _stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def throwaway_nodes(base: Path, *, kafka_heap: str = "512m") -> Iterator[tuple[KafkaNode, StoreNode]]:
    """A Kafka broker and a store of their own on free ports under ``base``, stopped afterwards
    (for benchmarks and tests that must not share, or that restart, their infrastructure)."""
    ports: list[int] = []
    while len(ports) < 3:
        if (port := free_port()) not in ports:
            ports.append(port)
    kafka = KafkaNode(data_dir=base / "kafka", port=ports[0], controller_port=ports[1], heap=kafka_heap)
    store = StoreNode(data_dir=base / "store", port=ports[2])
    try:
        store.start()
        kafka.start()
        yield kafka, store
    finally:
        kafka.stop()
        store.stop()


def default_nodes(base: Path | None = None) -> tuple[KafkaNode, StoreNode]:
    base = base or local_dir() / "run"
    kafka_port = int(os.environ.get("AFTERCARE_KAFKA_PORT", "9092"))
    kafka = KafkaNode(
        data_dir=base / "kafka",
        host=os.environ.get("AFTERCARE_KAFKA_HOST", "127.0.0.1"),
        port=kafka_port,
        controller_port=int(os.environ.get("AFTERCARE_KAFKA_CONTROLLER_PORT", kafka_port + 1)),
    )
    store = StoreNode(
        data_dir=base / "store",
        host=os.environ.get("AFTERCARE_STORE_HOST", "127.0.0.1"),
        port=int(os.environ.get("AFTERCARE_STORE_PORT", "27017")),
    )
    return kafka, store


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _pid_file(name: str) -> Path:
    return local_dir() / "run" / f"{name}.pid"


def _background_up() -> None:
    kafka, store = default_nodes()
    started: list[KafkaNode | StoreNode] = []
    try:
        for name, node in (("store", store), ("kafka", kafka)):
            pid_file = _pid_file(name)
            if pid_file.exists() and _pid_alive(int(pid_file.read_text())):
                _log(f"{name} already runs (pid {pid_file.read_text().strip()})")
                continue
            node.start()
            started.append(node)
            assert node.process is not None
            pid_file.write_text(str(node.process.pid))
            # Leave the process running after this script exits.
            node.process = None
    except InfraError:
        for node in started:
            node.stop()
        raise
    _log(f"Kafka ready on {kafka.bootstrap_servers} (log {kafka.log_file})")
    _log(f"store ready on {store.url} (log {store.log_file})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _background_down() -> None:
    for name in ("kafka", "store"):
        pid_file = _pid_file(name)
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            _log(f"stopped {name} (pid {pid})")
        pid_file.unlink()


def _status() -> None:
    kafka, store = default_nodes()
    print(f"kafka {kafka.bootstrap_servers}: {'up' if _tcp_accepts(kafka.host, kafka.port) else 'down'}")
    print(f"store {store.url}: {'up' if _mongo_ping(store.host, store.port) else 'down'}")


def _run_foreground(node: KafkaNode | StoreNode | MailCatcherNode, stop_delay_s: float) -> int:
    """Run the server until SIGTERM/SIGINT, for a process manager (``make run``'s honcho).

    On Ctrl-C every process gets its signal at once, but the services still need Kafka and the
    store while they finish the message in hand and commit. So the server runs in its own
    session (the terminal's SIGINT does not reach it) and is stopped ``stop_delay_s`` after the
    signal, once the services are gone; honcho waits 5 s before it kills anything.
    """
    command = node.prepare()
    with node.log_file.open("ab") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    asked_to_stop = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal asked_to_stop
        asked_to_stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _log(f"{type(node).__name__} started (pid {server.pid}); log {node.log_file}")
    try:
        node.process = server
        node.wait_ready()
        address = {KafkaNode: "bootstrap_servers", StoreNode: "url", MailCatcherNode: "inbox_url"}[type(node)]
        _log(f"ready: {getattr(node, address)}")
    except InfraError as problem:
        _log(f"error: {problem}")
        _stop_process(server, 30)
        return 1
    while not asked_to_stop and server.poll() is None:
        time.sleep(0.2)
    if server.poll() is not None:
        _log(f"{type(node).__name__} exited with code {server.returncode}; see {node.log_file}")
        return server.returncode or 1
    time.sleep(stop_delay_s)
    _stop_process(server, 30)
    _log(f"{type(node).__name__} stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "command",
        choices=["setup", "setup-inbox", "up", "down", "status", "run-kafka", "run-store", "run-mailcatcher", "wait"],
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "setup":
            setup()
        elif args.command == "setup-inbox":
            build_mailcatcher_inbox()
        elif args.command == "up":
            setup()
            _background_up()
        elif args.command == "down":
            _background_down()
        elif args.command == "status":
            _status()
        elif args.command == "wait":
            kafka, store = default_nodes()
            store.wait_ready()
            kafka.wait_ready()
        elif args.command == "run-kafka":
            return _run_foreground(default_nodes()[0], stop_delay_s=2.0)
        elif args.command == "run-store":
            return _run_foreground(default_nodes()[1], stop_delay_s=2.5)
        elif args.command == "run-mailcatcher":
            return _run_foreground(default_mailcatcher(), stop_delay_s=0.0)
    except InfraError as problem:
        _log(f"error: {problem}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
