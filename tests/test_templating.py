"""Templates: NAME.yaml files in a real folder, rendered with Jinja2 in a sandbox; every error one line."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from domain import TemplateUse
from sinks.mail import MailSink
from templating import Rendered, TemplateError, TemplateFile, Templates
from tests.conftest import ON_BOTH_BACKENDS
from tests.service import Api

SHIPPED = Path(__file__).resolve().parents[1] / "message_templates"
ENTITY = {"id": "user-1", "name": "Ada", "email": "test@example.com"}


def write(folder: Path, name: str, content: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(content, encoding="utf-8")
    return path


def error(templates: Templates, name: str, data: Any = None, entity: Any = None) -> str:
    """The one-line message of the TemplateError that rendering raises."""
    with pytest.raises(TemplateError) as raised:
        templates.render(name, {} if data is None else data, ENTITY if entity is None else entity)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_all_four_parts_are_rendered(tmp_path: Path) -> None:
    write(
        tmp_path,
        "deploy",
        'subject: "  {{ data.service }} {{ data.version }} is live  "\n'
        "text: |\n"
        "  Hello {{ entity.name }},\n"
        "  {{ data.service }} is at {{ data.version }}.\n"
        'html: "<p>{{ data.service }} for {{ entity.email }}</p>"\n'
        'slack: "*{{ data.service }}* {{ data.version }}"\n',
    )

    rendered = Templates(tmp_path).render("deploy", {"service": "billing", "version": "2.1"}, ENTITY)

    assert rendered == Rendered(
        name="deploy",
        sha256=rendered.sha256,
        subject="billing 2.1 is live",
        text="Hello Ada,\nbilling is at 2.1.",
        html="<p>billing for test@example.com</p>",
        slack="*billing* 2.1",
        files=[],
        locale=None,
    )


def test_html_and_slack_are_optional(tmp_path: Path) -> None:
    write(tmp_path, "short", "subject: Hi\ntext: Hello {{ entity.id }}\n")

    rendered = Templates(tmp_path).render("short", {}, ENTITY)

    assert (rendered.subject, rendered.text, rendered.html, rendered.slack) == ("Hi", "Hello user-1", None, None)


def test_a_template_may_set_its_category(tmp_path: Path) -> None:
    write(tmp_path, "invoice", "subject: Invoice\ntext: Due\ncategory: billing\n")
    write(tmp_path, "short", "subject: Hi\ntext: Hello\n")

    assert Templates(tmp_path).render("invoice", {}, ENTITY).category == "billing"
    assert Templates(tmp_path).render("short", {}, ENTITY).category is None


def test_html_escapes_data_but_keeps_the_templates_own_tags(tmp_path: Path) -> None:
    write(tmp_path, "x", 'subject: s\ntext: t\nhtml: "<p><b>{{ data.comment }}</b> by {{ entity.name }}</p>"\n')

    rendered = Templates(tmp_path).render("x", {"comment": "<script>alert('&')</script>"}, {"name": "A&B"})

    assert rendered.html == "<p><b>&lt;script&gt;alert(&#39;&amp;&#39;)&lt;/script&gt;</b> by A&amp;B</p>"


def test_slack_escapes_ampersand_and_angle_brackets_in_data_but_not_in_the_template(tmp_path: Path) -> None:
    write(tmp_path, "x", 'subject: s\ntext: t\nslack: "<https://x|link> & *{{ data.title }}* {{ entity.name }}"\n')

    rendered = Templates(tmp_path).render("x", {"title": "<!channel> R&D"}, {"name": "<@U123>"})

    assert rendered.slack == "<https://x|link> & *&lt;!channel&gt; R&amp;D* &lt;@U123&gt;"


def test_subject_and_text_are_not_escaped(tmp_path: Path) -> None:
    write(tmp_path, "x", 'subject: "{{ data.v }}"\ntext: "{{ data.v }}"\n')

    rendered = Templates(tmp_path).render("x", {"v": "<b> & 'q'"}, ENTITY)

    assert (rendered.subject, rendered.text) == ("<b> & 'q'", "<b> & 'q'")


def test_the_hash_is_of_the_bytes_read_and_an_edit_is_taken_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "x", "subject: One\ntext: t\n")
    templates = Templates(tmp_path)

    first = templates.render("x", {}, ENTITY)
    assert (first.subject, first.sha256) == ("One", hashlib.sha256(path.read_bytes()).hexdigest())

    write(tmp_path, "x", "subject: Two\ntext: t\n")
    second = templates.render("x", {}, ENTITY)
    assert (second.subject, second.sha256) == ("Two", hashlib.sha256(path.read_bytes()).hexdigest())
    assert second.sha256 != first.sha256


def test_the_shipped_welcome_template_renders() -> None:
    rendered = Templates(SHIPPED).render("welcome", {"service": "Billing & Co", "version": "2.4.1"}, ENTITY)

    assert "Billing & Co" in rendered.subject and "Ada" in rendered.subject
    assert "\n" not in rendered.subject
    assert "Hello Ada" in rendered.text and "Billing & Co 2.4.1" in rendered.text
    assert rendered.html is not None and "Billing &amp; Co" in rendered.html and "<p>" in rendered.html
    assert rendered.slack is not None and "*Billing &amp; Co*" in rendered.slack
    assert rendered.sha256 == hashlib.sha256((SHIPPED / "welcome.yaml").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("part", "source", "data", "variable"),
    [
        ("subject", "Hi {{ data.name }}", {}, "data.name"),
        ("text", "{{ data.order.id }}", {"customer": 1}, "data.order.id"),
        ("text", "{{ data.order['id'] }}", {}, "data.order.id"),
        ("text", "{{ data.order.id }}", {"order": {"total": 3}}, "data.order.id"),
        ("text", "{{ entity.name }}", {}, "entity.name"),
        ("text", "{{ nope }}", {}, "nope"),
        ("text", "{{ nope.deeper }}", {}, "nope.deeper"),
        ("html", "{% if data.x %}yes{% endif %}", {}, "data.x"),
        ("slack", "{{ data.x | upper }}", {}, "data.x"),
        ("text", "{{ data['a key'] }}", {}, "data['a key']"),
        (
            "text",
            "{% for line in data.lines %}{{ line.sku }}{% endfor %}",
            {"lines": [{"qty": 1}]},
            "data.lines[0].sku",
        ),
        ("text", "{{ data.lines[2] }}", {"lines": []}, "data.lines[2]"),
    ],
)
def test_an_undefined_variable_is_named_by_its_whole_path(
    tmp_path: Path, part: str, source: str, data: dict[str, Any], variable: str
) -> None:
    parts = {"subject": "s", "text": "t", part: source}
    write(tmp_path, "welcome", yaml.safe_dump(parts))

    message = error(Templates(tmp_path), "welcome", data, {"id": "user-1"})

    assert message == f"template 'welcome', {part}: {variable} is undefined"


def test_a_default_or_defined_test_handles_an_undefined_path(tmp_path: Path) -> None:
    write(tmp_path, "x", "subject: s\ntext: \"{{ data.order.id | default('none') }} {{ data.a.b is defined }}\"\n")

    assert Templates(tmp_path).render("x", {}, ENTITY).text == "none False"


def test_a_syntax_error_names_the_part_and_line(tmp_path: Path) -> None:
    write(tmp_path, "welcome", 'subject: s\ntext: "Hello\\n{{ data.name } }}"\n')

    assert error(Templates(tmp_path), "welcome") == "template 'welcome', text: syntax error on line 2: unexpected '}'"


@pytest.mark.parametrize(
    ("source", "attribute", "owner"),
    [
        ("{{ data.__class__ }}", "__class__", "dict"),
        ("{{ data.__class__.__subclasses__() }}", "__class__", "dict"),
        ('{{ "{0.__class__}".format(data) }}', "__class__", "dict"),
        ("{{ cycler.__init__.__globals__ }}", "__init__", "type"),
    ],
)
def test_a_sandbox_violation_is_not_allowed(tmp_path: Path, source: str, attribute: str, owner: str) -> None:
    write(tmp_path, "x", yaml.safe_dump({"subject": "s", "text": "t", "html": source}))

    assert error(Templates(tmp_path), "x") == (
        f"template 'x', html: not allowed: access to attribute {attribute!r} of {owner!r} object is unsafe"
    )


def test_an_error_raised_by_an_expression_names_the_part(tmp_path: Path) -> None:
    write(tmp_path, "x", "subject: s\ntext: t\nslack: '{{ data.n / 0 }}'\n")

    assert error(Templates(tmp_path), "x", {"n": 1}) == "template 'x', slack: ZeroDivisionError: division by zero"


@pytest.mark.parametrize("data", [["a"], "text", 3, None])
def test_data_must_be_a_json_object(tmp_path: Path, data: Any) -> None:
    write(tmp_path, "x", "subject: s\ntext: t\n")

    with pytest.raises(TemplateError) as raised:
        Templates(tmp_path).render("x", data, ENTITY)

    assert str(raised.value) == "template 'x': data must be a JSON object"


def test_an_unknown_template_is_named_without_the_folder_or_the_others(tmp_path: Path) -> None:
    write(tmp_path, "welcome", "subject: s\ntext: t\n")
    write(tmp_path, "alert", "subject: s\ntext: t\n")
    (tmp_path / "notes.txt").write_text("not a template")

    assert error(Templates(tmp_path), "welcom") == "template 'welcom': no such template"


@pytest.mark.parametrize("folder", ["empty", "absent"])
def test_an_unknown_template_in_a_folder_without_any(tmp_path: Path, folder: str) -> None:
    (tmp_path / "empty").mkdir()

    assert error(Templates(tmp_path / folder), "welcome") == "template 'welcome': no such template"


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", "x..y", ".x", "-x", "", "x y", "a" * 101, "x\n"])
def test_a_name_that_is_not_a_template_name_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "templates").mkdir()
    write(tmp_path, "x", "subject: s\ntext: t\n")  # what "../x" would reach

    assert error(Templates(tmp_path / "templates"), name) == (
        f"template {name!r}: not a template name (a letter or digit, then up to 99 letters, digits, "
        "'_', '.' or '-', without '..')"
    )


def test_the_longest_name_is_a_template_name(tmp_path: Path) -> None:
    name = "a" * 100
    write(tmp_path, name, "subject: s\ntext: t\n")

    assert Templates(tmp_path).render(name, {}, ENTITY).name == name


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "subject: s\ntext: t\nbody: b\n",
            "unknown key 'body' (allowed: subject, text, html, slack, attachments, inline, category)",
        ),
        (
            "subject: s\ntext: t\nbody: b\n1: c\n",
            "unknown keys 'body', 1 (allowed: subject, text, html, slack, attachments, inline, category)",
        ),
        ("text: t\n", "missing required key 'subject'"),
        ("html: h\n", "missing required keys 'subject', 'text'"),
        (
            "- subject\n- text\n",
            "must be a YAML mapping with keys subject, text and optionally html, slack, attachments, inline",
        ),
        (
            "just text\n",
            "must be a YAML mapping with keys subject, text and optionally html, slack, attachments, inline",
        ),
        ("", "must be a YAML mapping with keys subject, text and optionally html, slack, attachments, inline"),
        ("subject: [s\ntext: t\n", "not valid YAML on line 2: expected ',' or ']', but got ':'"),
        ("subject: s\n  text: t\n", "not valid YAML on line 2: mapping values are not allowed here"),
        (
            "subject: a\x00\ntext: t\n",
            "not valid YAML: unacceptable character #x0000: special characters are not allowed",
        ),
    ],
)
def test_a_file_that_is_not_a_template(tmp_path: Path, content: str, message: str) -> None:
    write(tmp_path, "x", content)

    assert error(Templates(tmp_path), "x") == f"template 'x': {message}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("subject: s\ntext: 3\n", "text: must be a string, not int"),
        ("subject: s\ntext:\n", "text: must be a string, not null"),
        ("subject: [a, b]\ntext: t\n", "subject: must be a string, not list"),
        ("subject: s\ntext: t\ncategory: [billing]\n", "category: must be a string, not list"),
        ("subject: s\ntext: t\nhtml: {p: 1}\n", "html: must be a string, not dict"),
        ("subject: s\ntext: t\nslack: true\n", "slack: must be a string, not bool"),
    ],
)
def test_a_part_that_is_not_a_string(tmp_path: Path, content: str, message: str) -> None:
    write(tmp_path, "x", content)

    assert error(Templates(tmp_path), "x") == f"template 'x', {message}"


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_bytes(b"subject: caf\xe9\ntext: t\n")

    assert error(Templates(tmp_path), "x") == "template 'x': not UTF-8 (invalid continuation byte at byte 12)"


def test_a_template_names_files_in_its_folder_read_at_each_rendering(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "terms.pdf").write_bytes(b"%PDF terms")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG logo")
    write(
        tmp_path,
        "welcome",
        "subject: Hi\ntext: t\nhtml: <img src='cid:logo'>\n"
        "attachments: [{path: files/terms.pdf}, {path: files/terms.pdf, filename: Terms 2027.pdf, content_type: "
        "application/pdf}]\n"
        "inline: [{content_id: logo, path: logo.png}]\n",
    )

    files = Templates(tmp_path).render("welcome", {}, ENTITY).files

    assert files == [
        TemplateFile("terms.pdf", b"%PDF terms", None, None),
        TemplateFile("Terms 2027.pdf", b"%PDF terms", "application/pdf", None),
        TemplateFile("logo.png", b"\x89PNG logo", None, "logo"),
    ]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ("attachments: [{path: ../secret.txt}]", "attachments: '../secret.txt': not in the templates' folder"),
        ("attachments: [{path: /etc/hostname}]", "attachments: '/etc/hostname': not in the templates' folder"),
        ("attachments: [{path: link}]", "attachments: 'link': not in the templates' folder"),  # a symlink out
        ("attachments: [{path: absent.pdf}]", "attachments: 'absent.pdf': No such file or directory"),
        ("attachments: [{path: sub}]", "attachments: 'sub': not a regular file"),
        ("attachments: [{path: big.bin}]", "attachments: 'big.bin': over 10,485,760 bytes, the most a file may be"),
        ("attachments: {path: a.pdf}", "attachments: must be a list of {path, filename, content_type}, not dict"),
        ("attachments: [{path: a.pdf, size: 3}]", "attachments: each must be a list of {path, filename, content_type}"),
        ("attachments: [{filename: a.pdf}]", "attachments: each needs key 'path'"),
        ("inline: [{path: a.png}]", "inline: each needs key 'content_id'"),
        ("attachments: [" + ", ".join(["{path: a.pdf}"] * 21) + "]", "at most 20 files, not 21"),
    ],
)
def test_a_file_a_template_cannot_name(tmp_path: Path, files: str, message: str) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    folder = tmp_path / "templates"
    (folder / "sub").mkdir(parents=True)
    (folder / "link").symlink_to(outside)
    with (folder / "big.bin").open("wb") as big:
        big.truncate(10 * 1024 * 1024 + 1)
    write(folder, "x", f"subject: s\ntext: t\n{files}\n")

    assert message in error(Templates(folder), "x")


def test_an_entity_gets_the_file_in_its_language(tmp_path: Path) -> None:
    write(tmp_path, "x", "subject: Hello {{ entity.name }}\ntext: t\n")
    german = write(tmp_path, "x.de", "subject: Hallo {{ entity.name }}\ntext: t\n")

    rendered = Templates(tmp_path).render("x", {}, {**ENTITY, "locale": "de"})

    assert (rendered.name, rendered.locale, rendered.subject) == ("x", "de", "Hallo Ada")
    assert rendered.sha256 == hashlib.sha256(german.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("files", "locale", "used"),
    [
        (["pt-BR", "pt"], "pt-BR", "pt-BR"),
        (["pt"], "pt-BR", "pt"),
        (["pt-BR"], "pt-PT", None),
        (["pt"], "pt", "pt"),
        (["de"], "pt-BR", None),
        (["pt", "de"], None, None),
        (["zh-Hant", "zh"], "zh-Hant-TW", "zh-Hant"),
        (["zh"], "zh-Hant-TW", "zh"),
    ],
)
def test_a_language_falls_back_one_subtag_at_a_time_then_to_the_default(
    tmp_path: Path, files: list[str], locale: str | None, used: str | None
) -> None:
    write(tmp_path, "x", "subject: default\ntext: t\n")
    for tag in files:
        write(tmp_path, f"x.{tag}", f"subject: {tag}\ntext: t\n")
    entity = ENTITY if locale is None else {**ENTITY, "locale": locale}

    rendered = Templates(tmp_path).render("x", {}, entity)

    assert (rendered.locale, rendered.subject) == (used, used or "default")


def test_a_template_only_in_one_language_is_no_template_for_the_others(tmp_path: Path) -> None:
    write(tmp_path, "x.de", "subject: Hallo\ntext: t\n")
    templates = Templates(tmp_path)

    assert templates.render("x", {}, {"locale": "de-AT"}).subject == "Hallo"
    assert error(templates, "x", entity={"locale": "fr"}) == "template 'x': no such template"
    assert error(templates, "x") == "template 'x': no such template"


@pytest.mark.parametrize(
    ("name", "tag"), [("welcome.de", "de"), ("welcome.pt-BR", "pt-BR"), ("a.b.zh-Hant-TW", "zh-Hant-TW")]
)
def test_a_name_ending_in_a_language_tag_is_refused(tmp_path: Path, name: str, tag: str) -> None:
    write(tmp_path, name, "subject: s\ntext: t\n")

    assert error(Templates(tmp_path), name) == (
        f"template {name!r}: a name may not end in a language tag: {name}.yaml is template "
        f"{name.removesuffix('.' + tag)!r} in {tag!r}, for entities whose locale is {tag!r}"
    )


@pytest.mark.parametrize("name", ["release.v2", "notes.2025", "digest.daily", "de"])
def test_a_name_with_dots_not_ending_in_a_language_tag_is_a_name(tmp_path: Path, name: str) -> None:
    write(tmp_path, name, "subject: s\ntext: t\n")

    assert Templates(tmp_path).render(name, {}, {"locale": "de"}).name == name


@pytest.mark.parametrize("locale", ["../x", "DE", 3])
def test_an_entity_locale_that_is_not_a_language_tag_is_refused(tmp_path: Path, locale: object) -> None:
    write(tmp_path, "x", "subject: s\ntext: t\n")

    assert error(Templates(tmp_path), "x", entity={"locale": locale}) == (
        f"template 'x': the entity's locale {locale!r} is not a language tag"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "subject: [s\ntext: t\n",
            "template 'x' (x.de.yaml): not valid YAML on line 2: expected ',' or ']', but got ':'",
        ),
        ("subject: s\ntext: '{{ data.y }}'\n", "template 'x' (x.de.yaml), text: data.y is undefined"),
        (
            "subject: s\ntext: t\nattachments: [{path: absent.pdf}]\n",
            "template 'x' (x.de.yaml), attachments: 'absent.pdf': No such file or directory",
        ),
    ],
)
def test_an_error_in_a_language_file_names_that_file(tmp_path: Path, content: str, message: str) -> None:
    write(tmp_path, "x", "subject: s\ntext: t\n")
    write(tmp_path, "x.de", content)

    assert error(Templates(tmp_path), "x", entity={"locale": "de"}) == message


@pytest.mark.parametrize(
    ("source", "locale", "text"),
    [
        ("{{ data.when | date }}", None, "Dec 6, 2026"),
        ("{{ data.when | date }}", "en", "Dec 6, 2026"),
        ("{{ data.when | date }}", "de", "06.12.2026"),
        ("{{ data.when | date('long') }}", "de", "6. Dezember 2026"),
        ("{{ data.when | date(format='d. MMM') }}", "de", "6. Dez."),
        ("{{ data.when | date }}", "pt-BR", "6 de dez. de 2026"),
        ("{{ data.when | date }}", "de-XX", "06.12.2026"),  # Babel knows no de_XX: de
        ("{{ data.when | date }}", "xx", "Dec 6, 2026"),  # nor xx: en
        ("{{ data.when | datetime }}", "en", "Dec 6, 2026, 11:30:00\u202fPM"),
        ("{{ data.when | datetime('short') }}", "de", "06.12.26, 23:30"),
        ("{{ data.when | time('short') }}", "de", "23:30"),
        ("{{ data.day | date('long') }}", "en", "December 6, 2026"),
        ("{{ data.day | datetime('short') }}", "de", "06.12.26, 00:00"),
    ],
)
def test_dates_are_formatted_for_the_entitys_locale(tmp_path: Path, source: str, locale: str | None, text: str) -> None:
    write(tmp_path, "x", yaml.safe_dump({"subject": "s", "text": source}))
    entity = ENTITY if locale is None else {**ENTITY, "locale": locale}

    rendered = Templates(tmp_path).render("x", {"when": "2026-12-06T23:30:00Z", "day": "2026-12-06"}, entity)

    assert rendered.text == text


@pytest.mark.parametrize(
    ("when", "text"),
    [
        ("2026-12-06T23:30:00", "Dec 6, 2026 · 11:30\u202fPM"),  # no offset: UTC
        ("2026-12-06T23:30:00+00:00", "Dec 6, 2026 · 11:30\u202fPM"),
        ("2026-12-07T01:30:00+02:00", "Dec 7, 2026 · 1:30\u202fAM"),  # its own offset, not UTC's
        ("2026-12-06T18:30:00-05:00", "Dec 6, 2026 · 6:30\u202fPM"),
    ],
)
def test_a_time_is_shown_at_its_own_offset_or_in_utc(tmp_path: Path, when: str, text: str) -> None:
    write(tmp_path, "x", "subject: s\ntext: \"{{ data.when | date }} · {{ data.when | time('short') }}\"\n")

    assert Templates(tmp_path).render("x", {"when": when}, ENTITY).text == text


@pytest.mark.parametrize(
    ("source", "data", "message"),
    [
        ("{{ data.when | date }}", {"when": "6/12/2026"}, "date: '6/12/2026' is not an ISO 8601 date or date and time"),
        ("{{ data.when | time }}", {"when": 1765063800}, "time: int is not a date or an ISO 8601 string"),
        ("{{ data.when | datetime }}", {"when": None}, "datetime: null is not a date or an ISO 8601 string"),
        ("{{ data.when | date }}", {}, "data.when is undefined"),
    ],
)
def test_a_date_filter_given_what_is_not_a_date(
    tmp_path: Path, source: str, data: dict[str, Any], message: str
) -> None:
    write(tmp_path, "x", yaml.safe_dump({"subject": "s", "text": source}))

    assert error(Templates(tmp_path), "x", data) == f"template 'x', text: {message}"


def test_a_template_use_without_a_locale_is_recorded_as_before() -> None:
    before = {"name": "welcome", "sha256": "0" * 64}

    assert TemplateUse.model_validate(before).model_dump(mode="json") == before
    assert TemplateUse(name="welcome", sha256="0" * 64, locale="de").model_dump(mode="json") == {
        **before,
        "locale": "de",
    }


def test_the_shipped_welcome_template_is_in_german_for_a_german_entity() -> None:
    rendered = Templates(SHIPPED).render("welcome", {"service": "Billing", "version": "2"}, {**ENTITY, "locale": "de"})

    assert (rendered.subject, rendered.locale) == ("Willkommen bei Billing 2, Ada", "de")
    assert rendered.sha256 == hashlib.sha256((SHIPPED / "welcome.de.yaml").read_bytes()).hexdigest()


@ON_BOTH_BACKENDS
async def test_a_german_entity_is_mailed_the_german_template_over_the_api(api: Api, mail_sink: MailSink) -> None:
    entry = {"name": "Eva", "email": "eva@example.com", "channels": {"email": "send"}, "locale": "de"}
    assert (await api.call("PUT", "/v1/entities/user-de", json=entry)).status_code == 200

    sent = await api.call(
        "POST",
        "/v1/notifications",
        json={"entity": "user-de", "template": "welcome", "data": {"service": "Billing", "version": "2.0"}},
    )

    assert sent.status_code == 202, sent.text
    assert (await api.outcome(sent.json()["id"]))["status"] == "sent"
    [mail] = mail_sink.messages
    assert mail.message["Subject"] == "Willkommen bei Billing 2.0, Eva"
    events = (await api.call("GET", f"/v1/notifications/{sent.json()['id']}/events")).json()
    assert events[0]["payload"]["operation"]["template"] == {
        "name": "welcome",
        "sha256": hashlib.sha256((SHIPPED / "welcome.de.yaml").read_bytes()).hexdigest(),
        "locale": "de",
    }
