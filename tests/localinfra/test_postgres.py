"""scripts/localinfra/postgres.py: where the cluster lives (root's outside the checkout), and what is written."""

from __future__ import annotations

import os
from pathlib import Path

from scripts.localinfra.postgres import (
    FALLBACK_BASE,
    MAX_SOCKET_PATH,
    PostgresLayout,
    abandoned,
    as_server_user,
    choose_root,
    database_url,
    outside_root,
    settings_file,
)
from scripts.localinfra.settings import Settings


def test_a_user_runs_the_server_on_the_checkouts_own_state(tmp_path: Path) -> None:
    assert choose_root(tmp_path / "state", as_root=False, server_home=Path("/var/lib/postgresql")) == tmp_path / "state"
    assert as_server_user(["pg_ctl", Path("/d")], as_root=False) == ["pg_ctl", "/d"]


def test_root_keeps_the_cluster_where_the_postgres_user_can_reach_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    checkout = tmp_path / "private" / "repo" / ".local"  # mode 0700 above: the postgres user cannot enter
    root = choose_root(checkout, as_root=True, server_home=home)
    assert root.parent == home / "kafka-log-gateway"
    assert root == choose_root(checkout, as_root=True, server_home=home), "up and down find the same one"
    assert root != choose_root(tmp_path / "other" / ".local", as_root=True, server_home=home)
    assert choose_root(checkout, as_root=True, server_home=None).parent == FALLBACK_BASE / "kafka-log-gateway"
    pg = PostgresLayout(root, checkout)
    assert pg.outside
    assert (pg.data, pg.run, pg.log) == (root / "postgres", root / "postgres-run", pg.run / "postgres.log")
    debian = PostgresLayout(outside_root(checkout, Path("/var/lib/postgresql")), checkout)
    assert len(str(debian.socket(65529))) < MAX_SOCKET_PATH, "however long the checkout's path"
    assert as_server_user(["pg_ctl"], as_root=True) == ["runuser", "-u", "postgres", "--", "pg_ctl"]


def test_a_cluster_already_in_the_checkout_stays_there(tmp_path: Path) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "PG_VERSION").write_text("15\n")
    assert choose_root(tmp_path, as_root=True, server_home=tmp_path / "home") == tmp_path
    assert not PostgresLayout(tmp_path, tmp_path).outside


def test_the_outside_name_follows_the_path_not_its_spelling(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "repo")
    assert outside_root(tmp_path / "link", Path("/b")) == outside_root(tmp_path / "repo", Path("/b"))


def make_outside(group: Path, name: str, owner: Path | None, postmaster: int | None = None) -> Path:
    root = group / name
    (root / "postgres").mkdir(parents=True)
    if owner is not None:
        (root / "infra-dir").write_text(f"{owner}\n")
    if postmaster is not None:
        (root / "postgres" / "postmaster.pid").write_text(f"{postmaster}\n/data\n")
    return root


def test_clusters_of_deleted_checkouts_are_found_once_stopped(tmp_path: Path) -> None:
    group = tmp_path / "kafka-log-gateway"
    live = tmp_path / "live"
    live.mkdir()
    mine = make_outside(group, "mine", tmp_path / "mine-is-gone-too")
    gone = make_outside(group, "gone", tmp_path / "deleted")
    make_outside(group, "kept", live)
    make_outside(group, "running", tmp_path / "deleted-2", postmaster=os.getpid())
    make_outside(group, "foreign", None)
    assert abandoned(group, keep=mine) == [gone]
    assert abandoned(tmp_path / "none", keep=mine) == []


def test_the_settings_file_names_the_port_and_the_private_socket_directory(tmp_path: Path) -> None:
    pg = PostgresLayout(tmp_path / "outside", tmp_path)
    text = settings_file(pg, 25433)
    assert "port = 25433\n" in text
    assert f"unix_socket_directories = '{pg.run}'\n" in text
    assert "listen_addresses = '127.0.0.1'\n" in text
    assert database_url(Settings(tmp_path, pg_port=25433)) == "postgresql://gateway:gateway@127.0.0.1:25433/gateway"
