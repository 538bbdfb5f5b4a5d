"""The envelope sender of every kind of mail, as a real SMTP server receives it: a
digest's names its delivery (VERP), other mail goes to the bare bounce address, and
without a bounce address everything goes as the From address."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from newsletter.config import get_settings
from newsletter.console.preview import Choice, send_tests
from newsletter.db import session_scope
from newsletter.delivery import verp
from newsletter.delivery.compose import message_for, personal_values, whole_message
from newsletter.delivery.mime import build_message, new_message_id
from newsletter.delivery.smtp import Sealer
from newsletter.models import Delivery
from newsletter.transactional import send_transactional
from subscribers.models import Subscriber
from tests.conftest import ScriptedHandler, apply_env
from tests.delivery.test_compose import delivery, make_digest, make_reader
from tests.factories import make_post, make_subscriber

BOUNCES = "bounces@news.example.org"
PAYLOAD = {"u": "x" * 22, "t": ["politics"], "c": "daily", "z": "UTC", "h": 7, "w": 0}


def send_every_kind(t0: dt.datetime) -> dict[str, int]:
    """Two readers' digests, a confirmation, a welcome and a console test copy; returns
    each reader's delivery id by address."""
    readers = [
        make_subscriber(a, "politics", now=t0) for a in ("ana.lima@example.org", "wen.li@x.org")
    ]
    make_post("politics", now=t0 + dt.timedelta(hours=1))
    assert send_transactional("confirm", readers[0], {"preferences": PAYLOAD}) == "sent"
    assert send_transactional("welcome", readers[0]) == "sent"
    assert send_tests(Choice(tags="politics").build(True), ["editor@example.org"]) == {}
    with session_scope() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery.id).join(
                Subscriber, Subscriber.id == Delivery.subscriber_id
            )
        )
        return {email: delivery_id for email, delivery_id in rows}


@pytest.mark.usefixtures("app_env")
def test_a_digest_bounce_address_names_its_delivery(
    monkeypatch: pytest.MonkeyPatch, smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    apply_env(monkeypatch, NEWSLETTER_BOUNCE_ADDRESS=BOUNCES)
    deliveries = send_every_kind(t0)
    settings = get_settings()
    *digests, confirmation, welcome, test_copy = smtp.messages
    assert len(digests) == 2
    for received in digests:
        [reader] = received.recipients
        local, _, domain = received.sender.partition("@")
        assert domain == "news.example.org" and local.startswith("bounces+")
        # The reader's address is nowhere in it, and it maps back to their delivery,
        # even once a DSN has quoted it in upper case inside other text.
        assert reader.split("@")[0] not in local.removeprefix("bounces+")
        assert verp.delivery_id_from(received.sender, settings) == deliveries[reader]
        quoted = f"Final-Recipient: rfc822; <{received.sender.upper()}>"
        assert verp.delivery_id_from(quoted, settings) == deliveries[reader]
    # Mail that is no delivery goes to the bare bounce address.
    for received in (confirmation, welcome, test_copy):
        assert received.sender == BOUNCES
        assert verp.delivery_id_from(received.sender, settings) is None
    # The From header is the sender's own, whatever the envelope says.
    assert digests[0].parsed()["From"].addresses[0].addr_spec == settings.from_


@pytest.mark.usefixtures("app_env")
def test_without_a_bounce_address_mail_goes_as_the_from_address(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    send_every_kind(t0)
    assert len(smtp.messages) == 5
    assert {m.sender for m in smtp.messages} == {get_settings().from_}
    assert not any(b"DKIM-Signature" in m.data for m in smtp.messages)


def test_an_international_bounce_domain_goes_as_a_labels(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str]
) -> None:
    apply_env(monkeypatch, NEWSLETTER_BOUNCE_ADDRESS="bounces@bücher.example")
    message = build_message(
        from_name="",
        from_address="digest@news.example.org",
        to_name="",
        to_address="ana@example.org",
        subject="Hello",
        text="Hello",
        html="<p>Hello</p>",
        message_id=new_message_id("news.example.org"),
        delivery_id=42,
    )
    sealed = Sealer(get_settings(), None).seal(message)
    assert sealed.sender.endswith("@xn--bcher-kva.example") and not sealed.smtputf8
    assert verp.delivery_id_from(sealed.sender, get_settings()) == 42
    assert sealed.data == message.data


def test_both_ways_of_building_a_copy_name_its_delivery(settings_env: dict[str, str]) -> None:
    """The compiled copy and the whole-message fallback carry the delivery id the
    envelope sender is made from."""
    settings = get_settings()
    digest, reader = make_digest(), make_reader()
    values = personal_values(reader, settings)
    expected = delivery().id
    assert message_for(delivery(), digest, reader, settings).delivery_id == expected
    assert whole_message(delivery(), digest, reader, settings, values).delivery_id == expected
