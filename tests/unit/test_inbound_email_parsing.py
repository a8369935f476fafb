"""Reading an email to a support address: bodies, charsets, headers, attachments, refusals."""

from __future__ import annotations

import base64
from email import policy
from email.message import EmailMessage

import pytest

from aftercare.intake.domain.inbound_email import (
    MAX_BODY_CHARS,
    MalformedEmail,
    html_to_text,
    parse_inbound_email,
)


def wire(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=policy.SMTP)


def raw_email(*headers: str, body: bytes = b"Hello.") -> bytes:
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + body + b"\r\n"


def text_email(body: bytes, charset: str, subject: str = "Printer") -> bytes:
    return raw_email(
        "From: customer@example.org",
        f"Subject: {subject}",
        "MIME-Version: 1.0",
        f"Content-Type: text/plain; charset={charset}",
        "Content-Transfer-Encoding: 8bit",
        body=body,
    )


# --- headers -----------------------------------------------------------------------------


def test_sender_recipients_and_thread_headers_are_read() -> None:
    raw = raw_email(
        "From: =?iso-8859-1?q?J=F6rg_M=FCller?= <Joerg@Customer.example>",
        "To: Support <support@tenant-a.example.net>, other@example.org",
        "Cc: boss@customer.example",
        "Subject: Re: [inc-1042] VPN down",
        "Message-ID: <reply-2@customer.example>",
        "In-Reply-To: <reply-1@customer.example>",
        "References: <original@customer.example>\r\n <reply-1@customer.example>",
    )

    email = parse_inbound_email(raw)

    assert email.sender_name == "Jörg Müller"
    assert email.sender_address == "Joerg@Customer.example"
    assert email.recipients == ("support@tenant-a.example.net", "other@example.org", "boss@customer.example")
    assert email.message_id == "<reply-2@customer.example>"
    assert email.in_reply_to == ("<reply-1@customer.example>",)
    assert email.references == ("<original@customer.example>", "<reply-1@customer.example>")
    # The direct parent first, then the thread from newest to oldest.
    assert email.thread_message_ids == ("<reply-1@customer.example>", "<original@customer.example>")
    assert email.incident_tag == "INC-1042"
    assert email.topic == "VPN down"


def test_the_topic_drops_reply_prefixes_and_tags_on_both_sides() -> None:
    email = parse_inbound_email(raw_email("Subject: AW: Re: [INC-7] RE: Fwd: Disk full on db-2"))

    assert email.topic == "Disk full on db-2"
    assert email.incident_tag == "INC-7"


def test_a_message_id_without_angle_brackets_is_kept_and_a_missing_one_is_none() -> None:
    assert parse_inbound_email(raw_email("Subject: x", "Message-ID: abc.123@fax-gw")).message_id == "<abc.123@fax-gw>"
    assert parse_inbound_email(raw_email("Subject: x")).message_id is None


def test_rfc_2047_subjects_in_several_charsets_are_decoded() -> None:
    koi8 = "Почта не работает".encode("koi8-r")
    encoded = "=?koi8-r?b?" + base64.b64encode(koi8).decode() + "?="

    assert parse_inbound_email(raw_email(f"Subject: {encoded}")).subject == "Почта не работает"
    assert parse_inbound_email(raw_email("Subject: =?iso-8859-1?q?K=F6ln_ist_offline?=")).subject == "Köln ist offline"
    # Adjacent encoded words join without the whitespace between them (RFC 2047 section 6.2).
    assert parse_inbound_email(raw_email("Subject: =?utf-8?q?Dr=C3=BC?= =?utf-8?q?cker?=")).subject == "Drücker"


def test_a_raw_8bit_utf8_subject_and_sender_name_are_read() -> None:
    raw = b'From: "J\xc3\xb6rg" <j@customer.example>\r\nSubject: Dr\xc3\xbccker kaputt\r\n\r\nx\r\n'

    email = parse_inbound_email(raw)

    assert email.subject == "Drücker kaputt"
    assert email.sender_name == "Jörg"
    assert email.sender_address == "j@customer.example"


def test_a_raw_latin1_subject_is_read_as_windows_1252_and_noted() -> None:
    email = parse_inbound_email(b"Subject: Caf\xe9 offline\r\n\r\nx\r\n")

    assert email.subject == "Café offline"
    assert any("Subject" in note and "Windows-1252" in note for note in email.notes)


def test_a_subject_in_an_unknown_charset_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(MalformedEmail, match="Subject header declares charset 'x-legacy'"):
        parse_inbound_email(raw_email("Subject: =?x-legacy?b?8NLJ18XU?="))


@pytest.mark.parametrize(
    "headers",
    [
        ("Auto-Submitted: auto-replied",),
        ("Precedence: bulk",),
        ("List-Id: <ops.lists.customer.example>",),
        ("X-Autoreply: yes",),
    ],
)
def test_auto_replies_bounces_and_list_mail_are_marked_automated(headers: tuple[str, ...]) -> None:
    assert parse_inbound_email(raw_email("Subject: Out of office", *headers)).automated


def test_a_person_s_message_is_not_automated() -> None:
    assert not parse_inbound_email(raw_email("Subject: Help", "Auto-Submitted: no")).automated


def test_the_content_digest_ignores_headers_a_relay_adds_on_retry() -> None:
    first = raw_email("Subject: x", body=b"same body")
    retried = raw_email("Received: from relay.example by mx.example", "Subject: x", body=b"same body")

    assert parse_inbound_email(first).content_digest == parse_inbound_email(retried).content_digest
    assert (
        parse_inbound_email(first).content_digest
        != parse_inbound_email(raw_email("Subject: x", body=b"another body")).content_digest
    )


# --- bodies and charsets -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("utf-8", "Grüße – der Server ist down ✔"),  # noqa: RUF001
        ("iso-8859-1", "Grüße aus Köln: der Drucker streikt."),
        ("windows-1252", "Schaden: 5 000 € pro Stunde – „dringend“"),  # noqa: RUF001
        ("koi8-r", "Сервер базы данных не отвечает."),
        ("cp1251", "Сервер не отвечает."),
    ],
)
def test_a_body_in_any_known_charset_is_decoded(charset: str, text: str) -> None:
    email = parse_inbound_email(text_email(text.encode(charset), charset))

    assert email.body == text
    assert email.notes == ()


def test_a_quoted_printable_latin1_body_from_the_standard_library_is_decoded() -> None:
    message = EmailMessage()
    message["Subject"] = "x"
    message.set_content("Grüße,\nder Drucker im 3. Stock ist kaputt.", charset="iso-8859-1")

    assert parse_inbound_email(wire(message)).body == "Grüße,\nder Drucker im 3. Stock ist kaputt."


def test_unlabelled_8bit_text_that_is_not_utf8_is_read_as_windows_1252_and_noted() -> None:
    raw = raw_email("Subject: x", body="Kasse hängt".encode("latin-1"))

    email = parse_inbound_email(raw)

    assert email.body == "Kasse hängt"
    assert email.notes == ("The text/plain part declares no charset and is not UTF-8; it was read as Windows-1252.",)


def test_us_ascii_label_on_utf8_text_is_read_as_utf8_and_noted() -> None:
    email = parse_inbound_email(text_email("Drücker".encode(), "us-ascii"))

    assert email.body == "Drücker"
    assert "read as UTF-8" in email.notes[0]


def test_invalid_bytes_in_a_known_charset_are_replaced_and_counted() -> None:
    email = parse_inbound_email(text_email(b"caf\xe9 is closed \xc3\xa9", "utf-8"))

    assert email.body == "caf\ufffd is closed é"
    assert email.notes == (
        "The text/plain part was not valid utf-8; 1 undecodable character(s) were replaced by \ufffd.",
    )


def test_an_unknown_charset_holding_utf8_is_read_and_noted() -> None:
    email = parse_inbound_email(text_email("Drücker".encode(), "x-mac-something"))

    assert email.body == "Drücker"
    assert "unknown charset 'x-mac-something'" in email.notes[0]


@pytest.mark.parametrize("charset", ["x-vendor-legacy", "base64"])
def test_an_unknown_charset_that_is_not_utf8_is_refused_naming_it(charset: str) -> None:
    with pytest.raises(MalformedEmail, match=f"declares charset '{charset}', which is not a known character set"):
        parse_inbound_email(text_email(b"\xe9\xff\xfe", charset))


def test_an_html_only_email_becomes_readable_text() -> None:
    message = EmailMessage()
    message["Subject"] = "Shop down"
    message.set_content(
        "<html><head><title>x</title><style>p{color:red}</style><script>alert(1)</script></head><body>"
        "<h1>Checkout&nbsp;fails</h1><p>Since <b>10:00</b> &amp; only for EU customers.</p>"
        '<ul><li>error 502</li><li>see <a href="https://shop.example/err">the error page</a></li></ul>'
        "<table><tr><td>host</td><td>web-1</td></tr></table>Regards<br>Anna</body></html>",
        subtype="html",
    )

    email = parse_inbound_email(wire(message))

    assert email.body == (
        "Checkout fails\n\nSince 10:00 & only for EU customers.\n\n- error 502\n"
        "- see the error page <https://shop.example/err>\n\nhost web-1\n\nRegards\nAnna"
    )


def test_a_link_whose_text_is_its_address_is_not_repeated() -> None:
    assert html_to_text('<p><a href="https://x.example/a">https://x.example/a</a></p>') == "https://x.example/a"


def test_preformatted_html_keeps_its_lines() -> None:
    assert html_to_text("<pre>line 1\n  indented</pre>") == "line 1\n  indented"


def test_the_plain_part_wins_over_its_html_alternative_which_is_no_attachment() -> None:
    message = EmailMessage()
    message["Subject"] = "x"
    message.set_content("Plain words.")
    message.add_alternative("<p>HTML words.</p>", subtype="html")

    email = parse_inbound_email(wire(message))

    assert email.body == "Plain words."
    assert email.attachments == ()


def test_text_split_around_an_inline_screenshot_is_kept_whole() -> None:
    message = EmailMessage()
    message["Subject"] = "x"
    message.make_mixed()
    first, image, second = EmailMessage(), EmailMessage(), EmailMessage()
    first.set_content("Look at this:")
    image.set_content(b"\x89PNG fake", maintype="image", subtype="png", disposition="inline")
    second.set_content("It happens every morning.")
    for part in (first, image, second):
        message.attach(part)

    email = parse_inbound_email(wire(message))

    assert email.body == "Look at this:\n\nIt happens every morning."
    assert [(a.filename, a.content_type) for a in email.attachments] == [("attachment-1.png", "image/png")]


def test_a_very_long_body_is_cut_and_the_cut_noted() -> None:
    email = parse_inbound_email(text_email(b"x" * (MAX_BODY_CHARS + 10), "us-ascii"))

    assert len(email.body) == MAX_BODY_CHARS
    assert email.notes == (
        f"The text was {MAX_BODY_CHARS + 10} characters long; only the first {MAX_BODY_CHARS} are kept.",
    )


# --- attachments -------------------------------------------------------------------------


def test_faxed_pdf_and_tiff_attachments_are_read_with_their_bytes() -> None:
    pdf, tiff = b"%PDF-1.4 " + bytes(range(256)) * 10, b"II*\x00" + bytes(range(256)) * 5
    message = EmailMessage()
    message["Subject"] = "Fax from +49 30 1234567"
    message.set_content("2 pages")
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename="fax.pdf")
    message.add_attachment(tiff, maintype="image", subtype="tiff", filename="fax.tif")

    email = parse_inbound_email(wire(message))

    assert email.body == "2 pages"
    assert [(a.filename, a.content_type, a.content) for a in email.attachments] == [
        ("fax.pdf", "application/pdf", pdf),
        ("fax.tif", "image/tiff", tiff),
    ]
    assert email.attachments[0].size_bytes == len(pdf)


def test_a_fax_that_is_only_a_pdf_has_an_empty_body_and_one_attachment() -> None:
    raw = raw_email(
        "Subject: Fax",
        "MIME-Version: 1.0",
        "Content-Type: application/pdf",
        "Content-Transfer-Encoding: base64",
        body=b"JVBERi0xLjQ=",
    )

    email = parse_inbound_email(raw)

    assert email.body == ""
    assert [(a.filename, a.content) for a in email.attachments] == [("attachment-1.pdf", b"%PDF-1.4")]


def test_attachment_names_are_decoded_and_stripped_of_paths() -> None:
    message = EmailMessage()
    message["Subject"] = "x"
    message.set_content("see files")
    message.add_attachment(b"a", maintype="application", subtype="pdf", filename="Résumé.pdf")
    message.add_attachment(b"b", maintype="application", subtype="octet-stream", filename="../../etc/passwd")

    email = parse_inbound_email(wire(message))

    assert [a.filename for a in email.attachments] == ["Résumé.pdf", "passwd"]


def test_a_forwarded_message_is_one_attachment() -> None:
    forwarded = EmailMessage()
    forwarded["Subject"] = "Original alert"
    forwarded.set_content("disk full")
    message = EmailMessage()
    message["Subject"] = "Fwd: Original alert"
    message.set_content("FYI")
    message.add_attachment(forwarded)

    email = parse_inbound_email(wire(message))

    assert email.body == "FYI"
    (attachment,) = email.attachments
    assert attachment.content_type == "message/rfc822"
    assert attachment.filename.endswith(".eml")
    assert b"Subject: Original alert" in attachment.content and b"disk full" in attachment.content


def test_a_damaged_base64_attachment_is_kept_and_noted() -> None:
    raw = raw_email(
        "Subject: x",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="b"',
        body=b"--b\r\nContent-Type: text/plain\r\n\r\nsee scan\r\n--b\r\nContent-Type: image/tiff\r\n"
        b"Content-Disposition: attachment; filename=scan.tif\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nSUkqAA!!\r\n--b--",
    )

    email = parse_inbound_email(raw)

    assert [a.filename for a in email.attachments] == ["scan.tif"]
    assert email.notes == ("The base64 encoding of attachment 'scan.tif' is damaged; the file may be incomplete.",)


# --- structure ---------------------------------------------------------------------------


def test_a_message_without_headers_is_refused() -> None:
    with pytest.raises(MalformedEmail, match="no header section"):
        parse_inbound_email(b"the printer is broken\r\nplease help\r\n")


def test_a_multipart_without_a_boundary_is_refused() -> None:
    with pytest.raises(MalformedEmail, match="multipart/mixed part has no boundary parameter"):
        parse_inbound_email(raw_email("Subject: x", "Content-Type: multipart/mixed", body=b"text"))


def test_a_boundary_that_never_appears_is_refused_naming_it() -> None:
    with pytest.raises(MalformedEmail, match="The boundary 'zz-42' declared for a multipart/mixed part never"):
        parse_inbound_email(raw_email("Subject: x", 'Content-Type: multipart/mixed; boundary="zz-42"', body=b"text"))


def test_a_message_cut_off_before_its_closing_boundary_is_read_and_noted() -> None:
    raw = raw_email(
        "Subject: x",
        'Content-Type: multipart/mixed; boundary="b"',
        body=b"--b\r\nContent-Type: text/plain\r\n\r\nfirst part only",
    )

    email = parse_inbound_email(raw)

    assert email.body == "first part only"
    assert email.notes == (
        "The multipart/mixed part ended without its closing MIME boundary; the message may have been cut off.",
    )


def test_parts_nested_beyond_reason_are_refused() -> None:
    depth = 5000
    headers = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(depth))
    raw = b"Subject: x\r\n" + headers.encode() + b"Content-Type: text/plain\r\n\r\ndeep\r\n"

    with pytest.raises(MalformedEmail, match="nested too deeply"):
        parse_inbound_email(raw)
