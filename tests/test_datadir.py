"""The data dir's layout: the names on disk are part of the contract (backups, the
README's Privacy section, older data dirs), so they are spelled out here once more."""

from __future__ import annotations

from pathlib import Path

from aap.datadir import DataDir

LAYOUT = {
    "run": "run",
    "core_socket": "run/core.sock",
    "metrics": "run/metrics",
    "log": "log",
    "log_db": "log/log.db",
    "log_positions_db": "log/positions.db",
    "meta_db": "meta.db",
    "identities_db": "identities.db",
    "imports": "imports",
    "warehouse": "warehouse",
    "hot_db": "warehouse/hot.duckdb",
    "tiers": "tiers",
    "keys": "keys",
    "master_key": "keys/master.key",
    "keystore_db": "keys/keystore.db",
    "id_hash_key": "keys/id-hash.key",
    "subject_token_key": "keys/subject-token.key",
    "audit_key": "keys/audit.key",
    "cnil_salts": "keys/cnil-salts",
    "privacy": "privacy",
    "purposes": "privacy/purposes.json",
    "consent_db": "privacy/consent.db",
    "requests_db": "privacy/requests.db",
    "audit_log": "privacy/audit.jsonl",
    "audit_head": "privacy/audit.head",
    "receipts": "privacy/receipts",
    "exports": "privacy/exports",
    "tier_list_db": "tiers.db",
}


def test_every_path_keeps_its_name_on_disk(tmp_path: Path) -> None:
    paths = DataDir(tmp_path)
    named = {n for n in dir(DataDir) if isinstance(getattr(DataDir, n), property)}
    assert named == set(LAYOUT), "a path of DataDir is not in LAYOUT (or the reverse)"
    for name, rel in LAYOUT.items():
        assert getattr(paths, name) == tmp_path / rel, name
