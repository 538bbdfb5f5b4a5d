"""`newsletter users create|list|remove`: good input makes an account, bad input nothing."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.console import services
from newsletter.console.models import AuditEntry, StaffRole, StaffUser
from newsletter.db import session_scope
from tests.cli_runner import count
from tests.console.conftest import PASSWORD, actions

runner = CliRunner()


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.usefixtures("app_env")
class TestUsersCommand:
    def test_create_list_remove(self) -> None:
        code, out, err = run(
            "users", "create", "Ada@Example.org", "--role", "admin", "--password-stdin",
            stdin=PASSWORD + "\n",
        )  # fmt: skip
        assert code == 0, err
        assert "ada@example.org" in out
        with session_scope() as session:
            user = services.find_user(session, "ada@example.org")
            assert user is not None and user.role is StaffRole.ADMIN
            assert user.password_hash.startswith("$argon2id$")
            assert PASSWORD not in user.password_hash
            assert services.verify_password(user.password_hash, PASSWORD)

        code, out, _ = run("users", "list")
        assert code == 0 and "ada@example.org" in out and "admin" in out and "never" in out

        code, out, err = run("users", "remove", "ada@example.org")
        assert code == 0, err
        assert count(StaffUser) == 0
        assert actions() == [
            ("staff_created", "ada@example.org"),
            ("staff_removed", "ada@example.org"),
        ]

    @pytest.mark.parametrize(
        ("args", "stdin", "message"),
        [
            (["--role", "owner", "--password-stdin"], PASSWORD, "unknown role 'owner'"),
            (["--role", "editor", "--password-stdin"], "short pass", "at least 12 characters"),
            (["--role", "editor", "--password-stdin"], "", "nothing was read"),
            (["--role", "editor"], PASSWORD, "not a terminal"),
        ],
    )
    def test_bad_input_exits_2_and_writes_nothing(
        self, args: list[str], stdin: str, message: str
    ) -> None:
        code, _, err = run("users", "create", "ed@example.org", *args, stdin=stdin)
        assert code == 2 and message in err, err
        assert count(StaffUser) == 0 and count(AuditEntry) == 0

    def test_bad_address_and_duplicate(self) -> None:
        code, _, err = run(
            "users", "create", "not-an-address", "--role", "editor", "--password-stdin",
            stdin=PASSWORD,
        )  # fmt: skip
        assert code == 2 and "invalid email address" in err
        assert count(StaffUser) == 0
        args = ["users", "create", "ed@example.org", "--role", "editor", "--password-stdin"]
        assert run(*args, stdin=PASSWORD)[0] == 0
        code, _, err = run(*args, stdin=PASSWORD)
        assert code == 2 and "already exists" in err
        assert count(StaffUser) == 1

    def test_remove_unknown_exits_2(self) -> None:
        code, _, err = run("users", "remove", "nobody@example.org")
        assert code == 2 and "no staff account" in err


def test_login_delay_grows_then_stops() -> None:
    policy = services.LoginPolicy()
    delays = [policy.delay(n) for n in range(7)]
    assert delays[0] == 0 and delays == sorted(delays)
    assert delays[-1] == policy.max_delay


def _read_until(fd: int, marker: bytes, timeout: float = 30.0) -> bytes:
    """What the command wrote to the terminal, up to and including `marker`."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"no {marker!r} on the terminal; it showed {seen!r}")
        seen += os.read(fd, 1024)
    return seen


@pytest.mark.parametrize(("second", "created"), [(PASSWORD, True), ("another password", False)])
def test_prompts_twice_hidden_at_a_terminal(app_env: str, second: str, created: bool) -> None:
    """At a real terminal (a pty) the password is asked twice and never echoed."""
    main, child = pty.openpty()
    command = [sys.executable, "-m", "newsletter.cli", "users", "create", "ed@example.org"]
    proc = subprocess.Popen(
        [*command, "--role", "editor"], stdin=child, stdout=child, stderr=child, close_fds=True
    )
    os.close(child)
    try:
        shown = _read_until(main, b"Password: ")
        os.write(main, PASSWORD.encode() + b"\n")
        shown += _read_until(main, b"Repeat the password: ")
        os.write(main, second.encode() + b"\n")
        assert proc.wait(timeout=60) == (0 if created else 2)
        try:
            while chunk := os.read(main, 1024):
                shown += chunk
        except OSError:
            pass  # the terminal closed with the command
    finally:
        proc.kill()
        os.close(main)
    assert PASSWORD.encode() not in shown and second.encode() not in shown
    assert (b"the two passwords differ" in shown) is not created
    assert count(StaffUser) == (1 if created else 0)


@pytest.mark.real_password_cost
def test_passwords_are_hashed_at_the_recommended_argon2id_cost() -> None:
    """Other tests hash cheaply for speed; this pins what production stores."""
    stored = services.hash_password(PASSWORD)
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert services.verify_password(stored, PASSWORD)
    assert not services.verify_password(stored, PASSWORD + "!")
