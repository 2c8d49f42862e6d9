"""librdkafka's mock cluster, with broker failures injected through its mock API.

No Kafka broker installs on these machines. librdkafka (bundled in the confluent-kafka
wheel, ``confluent_kafka.libs/librdkafka-*.so.1``) carries a mock cluster and exports its
whole API (``src/rdkafka_mock.h``), which confluent-kafka's Python API does not wrap. A
holder process loads that library with ctypes, makes an ``rd_kafka_t``
(``rd_kafka_conf_new`` + ``rd_kafka_new``) and a mock cluster of 3 brokers on it
(``rd_kafka_mock_cluster_new``), prints the bootstrap servers, then obeys one command a
line on stdin, answering ``ok`` (or ``error <why>``) on stdout:

=================================  ==============================================
``down <id>`` / ``up <id>``         ``rd_kafka_mock_broker_set_down/up``: the broker
                                    closes its connections and refuses new ones
                                    (same port when it is up again)
``leader <topic> <part> <id>``      ``rd_kafka_mock_partition_set_leader`` (-1: none;
                                    a topic not there is created with the defaults)
``errors <apikey> <n> <err>…``      ``rd_kafka_mock_push_request_errors_array``: the
                                    next ``n`` requests of that API key, whichever
                                    broker gets them, answer these errors in turn
``rtt <id> <ms>``                   ``rd_kafka_mock_broker_set_rtt``: responses delayed
``topic <name> <parts> <repl>``     ``rd_kafka_mock_topic_create``
``coordinator <type> <key> <id>``   ``rd_kafka_mock_coordinator_set`` (``group``, …)
``track`` / ``requests <apikey>``   ``rd_kafka_mock_start_request_tracking`` /
                                    ``rd_kafka_mock_get_requests``: ``ok <count>``
=================================  ==============================================

Every call works from ctypes (``rd_kafka_mock_push_request_errors`` is variadic, so its
``_array`` form is called). The brokers' ids are 1…N. What the mock does not model (read
from ``rdkafka_mock.c`` and ``rdkafka_mock_handlers.c``):

- a broker going down does not move the leadership of its partitions: each partition's
  leader is one of its replicas picked at random when the topic is created, and stays
  there until ``leader`` moves it (the test is the controller);
- a group's coordinator is one broker by a hash of the group's name, moved only by
  ``coordinator``; while it is down, commits fail with ``_WAIT_COORD`` and the group
  drops members whose heartbeats stop for their session timeout;
- replicas hold no copies (``acks=all`` is answered by the leader alone), so a broker
  down loses nothing it stored: the partitions live in the holder's memory;
- an injected error is answered instead of storing the request (so pushed errors test
  retries, not a stored write whose answer was lost);
- producer sequence numbers are checked only for a transactional producer: an idempotent
  one's request sent again after its answer was lost (a broker down during ``rtt``) is
  stored twice, which a real broker would refuse as a duplicate (seen in
  tests/process/test_processor_kafka.py, where the processor's dedup drops the copies).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
import time

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient

BROKERS = 3
_topics = itertools.count()

HOLDER = r'''
import ctypes, glob, os, sys
import confluent_kafka

libs = os.path.join(os.path.dirname(os.path.dirname(confluent_kafka.__file__)),
                    "confluent_kafka.libs")
found = sorted(glob.glob(os.path.join(libs, "librdkafka*.so*")))
if not found:
    sys.exit(f"no librdkafka*.so* in {libs}: the mock API is reached through the librdkafka "
             "bundled in the confluent-kafka wheel (a confluent-kafka built against a system "
             "librdkafka has none)")
lib = ctypes.CDLL(found[0])
P, I, I16, I32, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_int16, ctypes.c_int32, ctypes.c_char_p
for name, res, args in [
        ("rd_kafka_conf_new", P, []), ("rd_kafka_conf_set", I, [P, S, S, S, ctypes.c_size_t]),
        ("rd_kafka_new", P, [I, P, S, ctypes.c_size_t]), ("rd_kafka_err2str", S, [I]),
        ("rd_kafka_mock_cluster_new", P, [P, I]), ("rd_kafka_mock_cluster_bootstraps", S, [P]),
        ("rd_kafka_mock_broker_set_down", I, [P, I32]),
        ("rd_kafka_mock_broker_set_up", I, [P, I32]),
        ("rd_kafka_mock_broker_set_rtt", I, [P, I32, I]),
        ("rd_kafka_mock_partition_set_leader", I, [P, S, I32, I32]),
        ("rd_kafka_mock_topic_create", I, [P, S, I, I]),
        ("rd_kafka_mock_coordinator_set", I, [P, S, S, I32]),
        ("rd_kafka_mock_push_request_errors_array", None,
         [P, I16, ctypes.c_size_t, ctypes.POINTER(I)]),
        ("rd_kafka_mock_start_request_tracking", None, [P]),
        ("rd_kafka_mock_get_requests", ctypes.POINTER(P), [P, ctypes.POINTER(ctypes.c_size_t)]),
        ("rd_kafka_mock_request_api_key", I16, [P]),
        ("rd_kafka_mock_request_destroy_array", None, [ctypes.POINTER(P), ctypes.c_size_t])]:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = res, args
err = ctypes.create_string_buffer(512)
conf = lib.rd_kafka_conf_new()
for k, v in [("log_level", "0"), ("client.id", "aap-mock-holder")]:
    if lib.rd_kafka_conf_set(conf, k.encode(), v.encode(), err, 512) != 0:
        sys.exit(f"rd_kafka_conf_set {k}: {err.value.decode()}")
rk = lib.rd_kafka_new(0, conf, err, 512)  # RD_KAFKA_PRODUCER; it owns conf now
if not rk:
    sys.exit(f"rd_kafka_new: {err.value.decode()}")
mc = lib.rd_kafka_mock_cluster_new(rk, int(sys.argv[1]))
if not mc:
    sys.exit("rd_kafka_mock_cluster_new failed")
print(lib.rd_kafka_mock_cluster_bootstraps(mc).decode(), flush=True)


def code(word):
    """An error code: a number or a confluent_kafka.KafkaError name."""
    return int(word) if word.lstrip("-").isdigit() else getattr(confluent_kafka.KafkaError, word)


def run(cmd, args):
    if cmd in ("down", "up"):
        f = lib.rd_kafka_mock_broker_set_down if cmd == "down" else lib.rd_kafka_mock_broker_set_up
        return f(mc, int(args[0]))
    if cmd == "rtt":
        return lib.rd_kafka_mock_broker_set_rtt(mc, int(args[0]), int(args[1]))
    if cmd == "leader":
        return lib.rd_kafka_mock_partition_set_leader(mc, args[0].encode(), int(args[1]),
                                                      int(args[2]))
    if cmd == "topic":
        return lib.rd_kafka_mock_topic_create(mc, args[0].encode(), int(args[1]), int(args[2]))
    if cmd == "coordinator":
        return lib.rd_kafka_mock_coordinator_set(mc, args[0].encode(), args[1].encode(),
                                                 int(args[2]))
    if cmd == "errors":
        n = int(args[1])
        errs = [code(w) for w in args[2:]] or [0]
        arr = (I * n)(*[errs[i % len(errs)] for i in range(n)])
        lib.rd_kafka_mock_push_request_errors_array(mc, int(args[0]), n, arr)
        return 0
    if cmd == "track":
        lib.rd_kafka_mock_start_request_tracking(mc)
        return 0
    if cmd == "requests":
        cnt = ctypes.c_size_t()
        reqs = lib.rd_kafka_mock_get_requests(mc, ctypes.byref(cnt))
        n = sum(lib.rd_kafka_mock_request_api_key(reqs[i]) == int(args[0])
                for i in range(cnt.value))
        lib.rd_kafka_mock_request_destroy_array(reqs, cnt.value)
        return f"ok {n}"
    raise ValueError(f"unknown command {cmd}")


for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    try:
        rc = run(words[0], words[1:])
    except (ValueError, IndexError, AttributeError) as exc:
        print(f"error {exc!r}", flush=True)
        continue
    if isinstance(rc, str):
        print(rc, flush=True)
    else:
        print("ok" if rc == 0 else f"error {lib.rd_kafka_err2str(rc).decode()}", flush=True)
'''


class MockError(RuntimeError):
    """A command the mock cluster refused."""


class Cluster:
    """A mock cluster of ``brokers`` brokers (ids 1…N) in a holder process."""

    def __init__(self, brokers: int = BROKERS) -> None:
        self.ids = list(range(1, brokers + 1))
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(brokers)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        assert self.proc.stdout is not None
        self.servers = self.proc.stdout.readline().strip()
        if not self.servers:
            self.proc.wait(10)
            self._stderr.seek(0)
            raise RuntimeError("the mock cluster did not start: "
                               + self._stderr.read().decode(errors="replace").strip())

    def url(self, options: str = "consumer.session.timeout.ms=6000") -> str:
        """A new topic's URL; a member that died unannounced holds its group up for the
        session timeout (6 s here, librdkafka's default is 45 s)."""
        return f"kafka://{self.servers}/t{next(_topics)}?{options}"

    def command(self, *words: object) -> str:
        """Send one command line to the holder; raises :class:`MockError` unless ``ok``
        (returns what follows it)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer.split(" ", 1)[0] != "ok":
            raise MockError(f"{' '.join(map(str, words))}: {answer or 'the holder died'}")
        return answer[3:]

    def down(self, broker: int) -> None:
        self.command("down", broker)

    def up(self, broker: int) -> None:
        self.command("up", broker)

    def leader(self, topic: str, partition: int, broker: int) -> None:
        self.command("leader", topic, partition, broker)

    def errors(self, api_key: int, count: int, *codes: int | str) -> None:
        """The next ``count`` requests of ``api_key`` (0: Produce) fail with ``codes`` in
        turn (a number or a ``confluent_kafka.KafkaError`` name)."""
        self.command("errors", api_key, count, *codes)

    def rtt(self, broker: int, ms: int) -> None:
        self.command("rtt", broker, ms)

    def topic(self, name: str, partitions: int = 4, replication: int = BROKERS) -> None:
        self.command("topic", name, partitions, replication)

    def coordinator(self, key: str, broker: int, key_type: str = "group") -> None:
        self.command("coordinator", key_type, key, broker)

    def track(self) -> None:
        """Record every request the brokers get from now on (``requests`` counts them)."""
        self.command("track")

    def requests(self, api_key: int) -> int:
        """How many requests of ``api_key`` the brokers got since :meth:`track`."""
        return int(self.command("requests", api_key))

    def leaders(self, topic: str, timeout: float = 60) -> dict[int, int]:
        """Partition → leader's broker id, as the cluster's metadata says now (asked of the
        brokers that are up)."""
        admin = AdminClient({"bootstrap.servers": self.servers, "log_level": 0})
        deadline = time.monotonic() + timeout
        while True:
            try:
                md = admin.list_topics(topic, timeout=10)
                t = md.topics[topic]
                if t.error is None and t.partitions:
                    return {p: pm.leader for p, pm in t.partitions.items()}
            except ck.KafkaException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no metadata for {topic}")
            time.sleep(0.2)

    def dropped(self, topic: str) -> dict[int, int]:
        """Each partition's low watermark: the mock trims a partition's oldest messages past
        a few MiB, read or not, whatever the topic's retention. Above 0, messages before it
        are gone: a consumer that had not read them yet lost them (no real broker with a
        sane retention would do that), one that had lost nothing."""
        return {p: low for p, (low, _) in self.watermarks(topic).items()}

    def heads(self, topic: str) -> dict[int, int]:
        """Each partition's high watermark: the offset its next message will get (the
        position a consumer that read all of it has reached)."""
        return {p: high for p, (_, high) in self.watermarks(topic).items()}

    def watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        """Each partition's low and high watermarks."""
        c = ck.Consumer({"bootstrap.servers": self.servers, "group.id": new_group(),
                         "log_level": 0})
        try:
            parts = c.list_topics(topic, timeout=30).topics[topic].partitions
            return {p: c.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=30)
                    for p in parts}
        finally:
            c.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self._stderr.close()


def topic_of(url: str) -> str:
    return url.split("/", 3)[3].split("?", 1)[0]



def new_group() -> str:
    """A consumer group of its own (a closed member holds a group up for a while)."""
    return f"g{next(_topics)}"
