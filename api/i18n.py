"""What the HTML pages say and how they are served: message catalogs (English and Russian), the
choice of language from Accept-Language, date formatting, and the template set-up shared by the
preference centre and the compliance console (the stylesheet is embedded in each page and pinned
by its hash in the Content-Security-Policy, so every asset comes from the app and no route is
public beyond the token links).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import pass_context
from litestar.datastructures import ResponseHeader
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template import TemplateConfig
from markupsafe import Markup

LANGUAGES = ("en", "ru")
DEFAULT_LANGUAGE = "en"
HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STYLESHEET = (HERE / "static" / "site.css").read_text(encoding="utf-8")
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLESHEET.encode()).digest()).decode()

# Every page: no script at all, the embedded stylesheet only, forms post to this origin, no
# framing, and no Referer (preference links carry a capability token in their path).
PAGE_HEADERS = [
    ResponseHeader(
        name="Content-Security-Policy",
        value=(
            f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
    ),
    ResponseHeader(name="Referrer-Policy", value="no-referrer"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Cache-Control", value="no-store"),
]
# the same, for a response built by hand (an exception handler's page: route headers do not
# reach it)
PAGE_HEADER_VALUES = {h.name: h.value for h in PAGE_HEADERS if h.value is not None}


def choose_language(
    accept_language: str | None, override: str | None = None, fallback: str = DEFAULT_LANGUAGE
) -> str:
    """`override` (a ?lang= choice) when supported, else the best Accept-Language match."""
    if override in LANGUAGES:
        return override  # type: ignore[return-value]
    best, best_q = None, 0.0
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        lang = tag.strip().lower().split("-")[0]
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        q -= position * 1e-6  # earlier wins among equals
        if lang in LANGUAGES and q > best_q:
            best, best_q = lang, q
    return best or (fallback if fallback in LANGUAGES else DEFAULT_LANGUAGE)


class Messages(dict[str, str]):
    """A catalog; a missing key shows as itself (tests check both catalogs have every key)."""

    lang: str = DEFAULT_LANGUAGE

    def __missing__(self, key: str) -> str:
        return key

    def __getattr__(self, key: str) -> str:
        if key.startswith("__"):
            raise AttributeError(key)
        return self[key]


def messages(lang: str) -> Messages:
    catalog = Messages(CATALOGS.get(lang, CATALOGS[DEFAULT_LANGUAGE]))
    catalog.lang = lang if lang in CATALOGS else DEFAULT_LANGUAGE
    return catalog


def purpose_label(t: Messages, purpose: str) -> str:
    return t.get(f"purpose_{purpose}", purpose.replace("_", " ").capitalize())


def purpose_text(t: Messages, purpose: str, fallback: str) -> str:
    return t.get(f"purpose_{purpose}_text", fallback)


def channel_label(t: Messages, channel: str) -> str:
    return t.get(f"channel_{channel}", channel.capitalize())


@pass_context
def code(context: Any, value: Any, family: str) -> str:
    """An API code (a purpose, a status, ...) in the page's language: `{{ c.status | code("consent")
    }}`. English pages show the code itself, as the API and the evidence bundle spell it; a code
    the catalog lacks (a purpose a policy file adds) shows as it is."""
    if value is None:
        return "—"
    return context["t"].get(f"code_{family}_{value}", str(value))


def when(value: Any) -> str:
    """A time as `2026-11-22 10:00 UTC` (ISO-like, the same in both languages)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def day(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d") if value.tzinfo else str(value.date())
    return when(value)


def _configure(engine: JinjaTemplateEngine) -> None:
    env = engine.engine
    env.filters["when"] = when
    env.filters["day"] = day
    env.filters["code"] = code
    env.globals["stylesheet"] = Markup(STYLESHEET)  # our own file, not user input
    env.trim_blocks = True
    env.lstrip_blocks = True


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(
        directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_configure
    )


EN: dict[str, str] = {
    "skip": "Skip to main content",
    "language": "Language",
    "page_version": "Page version",
    # preference centre
    "pref_title": "Your communication preferences",
    "pref_intro": "Choose what we may send you and how. Changes take effect as soon as you save.",
    "pref_addresses": "We hold these addresses for you",
    "pref_save": "Save my choices",
    "pref_saved": "Your choices have been saved.",
    "pref_nothing_changed": "Nothing was changed.",
    "pref_no_choices": "There is nothing we send you that you can choose here.",
    "pref_contract_note": "Needed to fulfil your orders; you may refuse a channel.",
    # a switch that is on for some of the customer's addresses of its channel: the others
    "pref_off_at": "off for",
    "pref_advertiser": "Advertiser: {}.",
    "pref_optout_title": "Unsubscribe from everything",
    "pref_optout_text": "Stops all advertising and the sale or sharing of your personal "
    "information, on every channel.",
    # what follows pref_optout_text, from what the button withdraws in the customer's jurisdiction
    "pref_optout_orders_continue": "Messages about your orders continue.",
    "pref_optout_orders_except": "Messages about your orders continue, except by {}: those "
    "need your separate consent, which this withdraws too.",
    "pref_optout_orders_stop": "Messages about your orders stop too: they need your separate "
    "consent, which this withdraws too.",
    "pref_optout_button": "Unsubscribe from everything",
    "pref_opted_out": "You are unsubscribed from all advertising on every channel.",
    "gpc_recorded": "Your browser sent a Global Privacy Control signal. We have recorded it as "
    "your request to opt out of the sale or sharing of your personal information.",
    "gpc_honoured": "Your browser's Global Privacy Control signal is honoured: you are opted "
    "out of the sale or sharing of your personal information.",
    "gpc_locked": "set by your browser's Global Privacy Control signal",
    "data_title": "Your data",
    "access_title": "Get a copy of your data",
    "access_text": "Download everything we hold about you, as a JSON file.",
    "access_button": "Download my data",
    "erase_title": "Delete your data",
    "erase_text": "Ask us to delete your personal data. This cannot be undone. We keep only the "
    "record of your consent choices that the law requires, without your personal details.",
    "erase_confirm": "I understand that my data will be deleted and that this cannot be undone",
    "pref_unsubscribe_link_note": "This link can turn messages off. To subscribe again, sign "
    "in to your account with us and open your preferences from there.",
    "data_manage_note": "To download a copy of your data or have it deleted, sign in to your "
    "account with us and open your preferences from there, or contact us.",
    "manage_only_title": "Not available from this link",
    "manage_only_text": "The link in our messages can only turn messages off. To download or "
    "delete your data, sign in to your account with us and open your preferences from there.",
    "erase_button": "Delete my data",
    "erase_need_confirm": "Tick the box to confirm that you want your data deleted.",
    "erase_received_title": "Your request to delete your data was received",
    "erase_received_text": "Request {id} was received on {received}. We will complete it by "
    "{due} at the latest.",
    "erase_joined_text": "A request to delete your data is already open; we will complete it.",
    "back": "Back to your preferences",
    "link_invalid_title": "This link is not valid",
    "link_invalid_text": "It may have been copied incompletely. Please use the link from our "
    "most recent message.",
    "pref_link_expired_stops_only": "This link has expired, so it can now only turn messages off.",
    "pref_grants_need_new_link": "What you turned off is off. To turn messages on, sign in to "
    "your account with us and open your preferences again: this link has expired.",
    "link_expired_title": "This link has expired",
    "link_expired_text": "For your security, a link to manage your data works for a limited "
    "time. Sign in to your account with us and open your preferences again.",
    "erased_title": "Your data has been deleted",
    "erased_text": "We no longer hold personal data about you and will not contact you unless "
    "you subscribe again.",
    "error_title": "Your request could not be processed",
    "error_prefix": "Error:",  # before the title of a page that answers a form with an error
    "unsub_title": "Unsubscribe",
    "unsub_question": "Stop these messages?",
    "unsub_address": "Address",
    "unsub_button": "Unsubscribe",
    "unsub_manage": "Manage all my preferences",
    "unsub_done_title": "You are unsubscribed",
    "unsub_done_text": "We will no longer send you these messages:",
    "purpose_service": "Service messages",
    "purpose_service_text": "Order status, payment, delivery and appointment reminders.",
    "purpose_marketing": "Advertising and offers",
    "purpose_marketing_text": "News, promotions and personal offers.",
    "purpose_sale_share": "Sale or sharing of my personal information",
    "purpose_sale_share_text": "Whether we may sell your personal information or share it with "
    "third parties for advertising.",
    "purpose_profiling": "Personalisation",
    "channel_email": "Email",
    "channel_sms": "SMS",
    "channel_phone": "Phone calls",
    "channel_push": "App notifications",
    "channel_messenger": "Messengers",
    "channel_*": "All channels",
    "allow_all": "Allow",
    # compliance console
    "c_title": "Compliance console",
    "c_sign_in": "Sign in",
    "c_sign_in_text": "Sign in with an API key whose role is compliance or admin. The key is "
    "not stored in your browser: a session of {hours} hours is.",
    "c_key_label": "API key",
    "c_sign_in_required": "Please sign in to continue.",
    "c_bad_key": "This key is unknown or has been revoked.",
    "c_wrong_role": "This key's role may not use the compliance console.",
    "c_form_expired": "The sign-in form expired. Please try again.",
    "c_csrf_failed": "The form expired or did not come from this console. Please try again.",
    "c_sign_out": "Sign out",
    "c_signed_in_as": "Signed in as",
    "c_nav": "Console sections",
    "c_nav_search": "Find a customer",
    "c_nav_requests": "Data subject requests",
    "c_nav_access": "Access log",
    "c_nav_verify": "Ledger verification",
    "c_search_label": "Email or phone number",
    "c_search_hint": "Searches by exact address; the search itself is not stored.",
    "c_search_button": "Find",
    "c_not_found": "No customer has this email or phone number.",
    "c_invalid_query": "This is not a valid email address or phone number.",
    "c_summary": "At a glance",
    "c_open_count": "Open requests",
    "c_overdue_count": "Overdue requests",
    "c_latest_checkpoint": "Latest signed checkpoint",
    "c_no_checkpoint": "No checkpoint has been signed yet.",
    "c_checkpoint_line": "{entries} entries, signed {at} (key {key})",
    "c_customer": "Customer",
    "c_profile_id": "Profile id",
    "c_status": "Status",
    "c_jurisdiction": "Jurisdiction",
    "c_merged_from": "Merged from",
    "c_identities": "Identities",
    "c_kind": "Kind",
    "c_value": "Value",
    "c_source": "Source",
    "c_current": "Current consent",
    "c_contactable": "May be contacted now",
    "c_purpose": "Purpose",
    "c_channel": "Channel",
    "c_address": "Address",
    "c_since": "Since",
    "c_history": "Consent history",
    "c_history_caption": "Every ledger entry of this customer, oldest first",
    "c_seq": "Seq",
    "c_occurred": "Occurred",
    "c_recorded": "Recorded",
    "c_event": "Change",
    "c_method": "Method",
    "c_wording": "Wording",
    "c_evidence": "Evidence",
    "c_chain": "Chain",
    "c_hash_ok": "hash recomputes",
    "c_hash_bad": "HASH MISMATCH",
    "c_covered": "covered by checkpoint",
    "c_not_effective": "not effective (older than the state)",
    "c_unreadable": "unreadable (key destroyed)",
    "c_chain_summary": "Hashes of this customer's {n} entries: {bad} mismatching. Entries up to "
    "seq {entries} are covered by the latest signed checkpoint.",
    "c_chain_no_checkpoint": "Hashes of this customer's {n} entries: {bad} mismatching. No "
    "checkpoint has been signed yet.",
    "c_run_verify": "Verify the whole ledger",
    "c_bundle": "Download evidence bundle (JSON)",
    "c_access_for": "Who read this customer's data",
    "c_requests_for": "Requests of this customer",
    "c_erased_note": "This customer's personal data was erased. Their ledger entries remain; "
    "the evidence can no longer be read.",
    "c_no_entries": "No entries.",
    "c_open_requests": "Open data subject requests",
    "c_all_requests": "All requests",
    "c_request": "Request",
    "c_kind_erasure": "erasure",
    "c_received": "Received",
    "c_due": "Due",
    "c_requested_by": "Requested by",
    "c_overdue": "Overdue",
    "c_on_time": "On time",
    "c_extended": "extended",
    "c_access_log": "Access log",
    "c_access_caption": "Reads and exports of personal data, newest first",
    "c_at": "When",
    "c_actor": "Key",
    "c_by": "By",
    "c_role": "Role",
    "c_action": "Action",
    "c_object": "Object",
    "c_rows": "Rows",
    "c_filter_customer": "for customer {pid}",
    "c_verify_title": "Consent ledger verification",
    "c_badge_ok": "OK",
    "c_badge_fail": "FAIL",
    "c_verify_ok": "The consent ledger verifies.",
    "c_verify_bad": "The consent ledger does NOT verify.",
    "c_requests_check": "Erasure requests",
    "c_requests_ok": "{n} erasure requests agree with their recorded transitions ({entries} "
    "transitions, chained).",
    "c_requests_bad": "{n} erasure requests disagree with their recorded transitions (status, "
    "due date, extensions) or were marked completed with their customer not erased:",
    "c_requests_chain_bad": "The chain of request transitions breaks at entry {seq}: {reason}.",
    "c_entries": "Entries",
    "c_head": "Head hash",
    "c_first_invalid": "First invalid entry",
    "c_reason": "Reason",
    "c_checked_at": "Checked at",
    "c_state": "Consent state and suppressions, against the ledger",
    "c_state_ok": "All {states} consent states and {suppressions} suppressions agree with the "
    "ledger.",
    "c_state_bad": "{n} disagreements: segments read this state, so it must not be trusted "
    "until they are explained. Examples:",
    "c_state_not_checked": "Not compared: the ledger itself does not verify.",
    "c_stored": "Stored",
    "c_expected": "Ledger implies",
    "c_checkpoints": "Signed checkpoints",
    "c_result": "Result",
    "c_not_found_title": "Not found",
    "c_forbidden_title": "Not allowed",
    "c_form_expired_title": "The form expired",
    "c_invalid_title": "Not an email address or phone number",
    "yes": "yes",
    "no": "no",
    # the API's codes as the console shows them (English: the codes themselves)
    "code_purpose_service": "service",
    "code_purpose_marketing": "marketing",
    "code_channel_email": "email",
    "code_channel_sms": "sms",
    "code_channel_phone": "phone",
    "code_channel_push": "push",
    "code_channel_messenger": "messenger",
    "code_channel_*": "*",
    "code_consent_granted": "granted",
    "code_consent_withdrawn": "withdrawn",
    "code_customer_active": "active",
    "code_customer_merged": "merged",
    "code_customer_erased": "erased",
    "code_customer_unknown": "unknown",
    "code_request_received": "received",
    "code_request_in_progress": "in_progress",
    "code_request_completed": "completed",
    "code_request_rejected": "rejected",
    "code_requester_customer": "customer",
    "code_requester_operator": "operator",
    "code_requester_retention": "retention",
    "code_identity_email": "email",
    "code_identity_phone": "phone",
    "code_identity_external_id": "external_id",
    "code_identity_profile": "profile",
}

RU: dict[str, str] = {
    "skip": "Перейти к содержанию",
    "language": "Язык",
    "page_version": "Версия страницы",
    "pref_title": "Ваши настройки сообщений",
    "pref_intro": "Выберите, что и как мы можем вам отправлять. Изменения вступают в силу "
    "сразу после сохранения.",
    "pref_addresses": "Ваши адреса, которые у нас есть",
    "pref_save": "Сохранить выбор",
    "pref_saved": "Ваш выбор сохранён.",
    "pref_nothing_changed": "Ничего не изменилось.",
    "pref_no_choices": "Здесь нет сообщений, которые вы можете настроить.",
    "pref_advertiser": "Рекламодатель: {}.",
    "pref_contract_note": "Нужны для выполнения ваших заказов; от отдельного канала можно "
    "отказаться.",
    "pref_off_at": "отключено для",
    "pref_optout_title": "Отписаться от всего",
    "pref_optout_text": "Прекращает всю рекламу, а также продажу и передачу ваших персональных "
    "данных, по всем каналам.",
    "pref_optout_orders_continue": "Сообщения о ваших заказах продолжат приходить.",
    "pref_optout_orders_except": "Сообщения о ваших заказах продолжат приходить, кроме "
    "сообщений по каналам: {}. На них нужно отдельное согласие, и оно тоже будет отозвано.",
    "pref_optout_orders_stop": "Сообщения о ваших заказах тоже прекратятся: на них нужно "
    "отдельное согласие, и оно тоже будет отозвано.",
    "pref_optout_button": "Отписаться от всего",
    "pref_opted_out": "Вы отписаны от всей рекламы по всем каналам.",
    "gpc_recorded": "Ваш браузер передал сигнал Global Privacy Control. Мы записали его как ваш "
    "отказ от продажи и передачи ваших персональных данных.",
    "gpc_honoured": "Сигнал Global Privacy Control вашего браузера соблюдается: вы отказались "
    "от продажи и передачи ваших персональных данных.",
    "gpc_locked": "задано сигналом Global Privacy Control вашего браузера",
    "data_title": "Ваши данные",
    "access_title": "Получить копию ваших данных",
    "access_text": "Скачайте всё, что мы храним о вас, в виде файла JSON.",
    "access_button": "Скачать мои данные",
    "erase_title": "Удалить ваши данные",
    "erase_text": "Попросите нас удалить ваши персональные данные. Это необратимо. Мы сохраним "
    "только требуемую законом запись ваших согласий, без ваших персональных данных.",
    "erase_confirm": "Я понимаю, что мои данные будут удалены без возможности восстановления",
    "pref_unsubscribe_link_note": "По этой ссылке можно отключить рассылки. Чтобы снова "
    "подписаться, войдите в свой аккаунт у нас и откройте настройки оттуда.",
    "data_manage_note": "Чтобы скачать копию своих данных или удалить их, войдите в свой аккаунт "
    "у нас и откройте настройки оттуда, или свяжитесь с нами.",
    "manage_only_title": "Недоступно по этой ссылке",
    "manage_only_text": "Ссылка в наших письмах позволяет только отключить рассылки. Чтобы "
    "скачать или удалить свои данные, войдите в свой аккаунт у нас и откройте настройки оттуда.",
    "erase_button": "Удалить мои данные",
    "erase_need_confirm": "Отметьте флажок, чтобы подтвердить удаление данных.",
    "erase_received_title": "Ваш запрос на удаление данных принят",
    "erase_received_text": "Запрос {id} принят {received}. Мы выполним его не позднее {due}.",
    "erase_joined_text": "Запрос на удаление ваших данных уже открыт; мы его выполним.",
    "back": "Вернуться к настройкам",
    "link_invalid_title": "Ссылка недействительна",
    "link_invalid_text": "Возможно, она скопирована не полностью. Воспользуйтесь ссылкой из "
    "нашего последнего письма или сообщения.",
    "pref_link_expired_stops_only": "Срок действия ссылки истёк, поэтому по ней теперь можно "
    "только отключить сообщения.",
    "pref_grants_need_new_link": "Отключённое вами отключено. Чтобы включить сообщения, войдите "
    "в свой аккаунт у нас и снова откройте настройки: срок действия этой ссылки истёк.",
    "link_expired_title": "Срок действия ссылки истёк",
    "link_expired_text": "Ради вашей безопасности ссылка для управления данными действует "
    "ограниченное время. Войдите в свой аккаунт у нас и снова откройте настройки.",
    "erased_title": "Ваши данные удалены",
    "erased_text": "Мы больше не храним ваших персональных данных и не свяжемся с вами, пока вы "
    "снова не подпишетесь.",
    "error_title": "Не удалось выполнить запрос",
    "error_prefix": "Ошибка:",
    "unsub_title": "Отписаться от рассылки",
    "unsub_question": "Больше не присылать вам эти сообщения?",
    "unsub_address": "Адрес",
    "unsub_button": "Отписаться",
    "unsub_manage": "Настроить все подписки",
    "unsub_done_title": "Вы отписались",
    "unsub_done_text": "Мы больше не будем присылать вам эти сообщения:",
    "purpose_service": "Сервисные сообщения",
    "purpose_service_text": "Статус заказа, оплата, доставка, напоминания о записи.",
    "purpose_marketing": "Реклама и предложения",
    "purpose_marketing_text": "Новости, акции и персональные предложения.",
    "purpose_sale_share": "Продажа или передача моих персональных данных",
    "purpose_sale_share_text": "Можем ли мы продавать ваши персональные данные или передавать "
    "их третьим лицам для рекламы.",
    "purpose_profiling": "Персонализация",
    "channel_email": "Электронная почта",
    "channel_sms": "SMS",
    "channel_phone": "Телефонные звонки",
    "channel_push": "Уведомления в приложении",
    "channel_messenger": "Мессенджеры",
    "channel_*": "Все каналы",
    "allow_all": "Разрешить",
    "c_title": "Консоль комплаенса",
    "c_sign_in": "Войти",
    "c_sign_in_text": "Войдите с API-ключом с ролью compliance или admin. Ключ не сохраняется в "
    "браузере: сохраняется сессия на {hours} ч.",
    "c_key_label": "API-ключ",
    "c_sign_in_required": "Войдите, чтобы продолжить.",
    "c_bad_key": "Этот ключ неизвестен или отозван.",
    "c_wrong_role": "Роль этого ключа не даёт доступа к консоли комплаенса.",
    "c_form_expired": "Форма входа устарела. Попробуйте ещё раз.",
    "c_csrf_failed": "Форма устарела или отправлена не из этой консоли. Попробуйте ещё раз.",
    "c_sign_out": "Выйти",
    "c_signed_in_as": "Вы вошли как",
    "c_nav": "Разделы консоли",
    "c_nav_search": "Найти клиента",
    "c_nav_requests": "Запросы субъектов данных",
    "c_nav_access": "Журнал доступа",
    "c_nav_verify": "Проверка журнала согласий",
    "c_search_label": "Email или номер телефона",
    "c_search_hint": "Поиск по точному адресу; сам запрос не сохраняется.",
    "c_search_button": "Найти",
    "c_not_found": "Клиента с таким email или телефоном нет.",
    "c_invalid_query": "Это не похоже на email или номер телефона.",
    "c_summary": "Сводка",
    "c_open_count": "Открытые запросы",
    "c_overdue_count": "Просроченные запросы",
    "c_latest_checkpoint": "Последняя подписанная контрольная точка",
    "c_no_checkpoint": "Контрольные точки ещё не подписывались.",
    "c_checkpoint_line": "{entries} записей, подписана {at} (ключ {key})",
    "c_customer": "Клиент",
    "c_profile_id": "Идентификатор профиля",
    "c_status": "Статус",
    "c_jurisdiction": "Юрисдикция",
    "c_merged_from": "Объединён из",
    "c_identities": "Идентификаторы",
    "c_kind": "Тип",
    "c_value": "Значение",
    "c_source": "Источник",
    "c_current": "Текущие согласия",
    "c_contactable": "Можно связаться сейчас",
    "c_purpose": "Цель",
    "c_channel": "Канал",
    "c_address": "Адрес",
    "c_since": "С",
    "c_history": "История согласий",
    "c_history_caption": "Все записи журнала по этому клиенту, от старых к новым",
    "c_seq": "№",
    "c_occurred": "Произошло",
    "c_recorded": "Записано",
    "c_event": "Изменение",
    "c_method": "Способ",
    "c_wording": "Текст",
    "c_evidence": "Доказательства",
    "c_chain": "Цепочка",
    "c_hash_ok": "хеш сходится",
    "c_hash_bad": "ХЕШ НЕ СХОДИТСЯ",
    "c_covered": "покрыто контрольной точкой",
    "c_not_effective": "не действует (старше текущего состояния)",
    "c_unreadable": "не читается (ключ уничтожен)",
    "c_chain_summary": "Хеши {n} записей клиента: не сходятся — {bad}. Записи до № {entries} "
    "покрыты последней подписанной контрольной точкой.",
    "c_chain_no_checkpoint": "Хеши {n} записей клиента: не сходятся — {bad}. Контрольные точки "
    "ещё не подписывались.",
    "c_run_verify": "Проверить весь журнал",
    "c_bundle": "Скачать пакет доказательств (JSON)",
    "c_access_for": "Кто читал данные этого клиента",
    "c_requests_for": "Запросы этого клиента",
    "c_erased_note": "Персональные данные этого клиента удалены. Записи журнала сохранены; "
    "доказательства прочитать больше нельзя.",
    "c_no_entries": "Записей нет.",
    "c_open_requests": "Открытые запросы субъектов данных",
    "c_all_requests": "Все запросы",
    "c_request": "Запрос",
    "c_kind_erasure": "удаление",
    "c_received": "Получен",
    "c_due": "Срок",
    "c_requested_by": "Кем подан",
    "c_overdue": "Просрочен",
    "c_on_time": "В срок",
    "c_extended": "продлён",
    "c_access_log": "Журнал доступа",
    "c_access_caption": "Чтение и выгрузка персональных данных, сначала новые",
    "c_at": "Когда",
    "c_actor": "Ключ",
    "c_by": "Кем",
    "c_role": "Роль",
    "c_action": "Действие",
    "c_object": "Объект",
    "c_rows": "Строк",
    "c_filter_customer": "по клиенту {pid}",
    "c_verify_title": "Проверка журнала согласий",
    "c_badge_ok": "ВЕРНО",
    "c_badge_fail": "ОШИБКА",
    "c_verify_ok": "Журнал согласий проверен: всё сходится.",
    "c_verify_bad": "Журнал согласий НЕ проходит проверку.",
    "c_requests_check": "Запросы на удаление",
    "c_requests_ok": "Запросов на удаление: {n}; все совпадают с записанными переходами "
    "(переходов в цепочке: {entries}).",
    "c_requests_bad": "Запросов на удаление, расходящихся с записанными переходами (статус, "
    "срок, продления) или отмеченных выполненными без удаления клиента: {n}:",
    "c_requests_chain_bad": "Цепочка переходов запросов нарушена на записи {seq}: {reason}.",
    "c_entries": "Записей",
    "c_head": "Хеш последней записи",
    "c_first_invalid": "Первая неверная запись",
    "c_reason": "Причина",
    "c_checked_at": "Проверено",
    "c_state": "Состояние согласий и блокировки в сравнении с журналом",
    "c_state_ok": "Все состояния согласий ({states}) и блокировки ({suppressions}) сходятся с "
    "журналом.",
    "c_state_bad": "Расхождений: {n}. Сегменты читают это состояние: ему нельзя доверять, пока "
    "расхождения не объяснены. Примеры:",
    "c_state_not_checked": "Не сравнивалось: сам журнал не проходит проверку.",
    "c_stored": "Хранится",
    "c_expected": "По журналу",
    "c_checkpoints": "Подписанные контрольные точки",
    "c_result": "Результат",
    "c_not_found_title": "Не найдено",
    "c_forbidden_title": "Доступ запрещён",
    "c_form_expired_title": "Форма устарела",
    "c_invalid_title": "Это не email и не номер телефона",
    "yes": "да",
    "no": "нет",
    # the API's codes as the console shows them (English: the codes themselves)
    "code_purpose_service": "сервисные",
    "code_purpose_marketing": "реклама",
    "code_channel_email": "эл. почта",
    "code_channel_sms": "SMS",
    "code_channel_phone": "звонки",
    "code_channel_push": "push-уведомления",
    "code_channel_messenger": "мессенджеры",
    "code_channel_*": "все каналы",
    "code_consent_granted": "дано",
    "code_consent_withdrawn": "отозвано",
    "code_customer_active": "действует",
    "code_customer_merged": "объединён с другим",
    "code_customer_erased": "удалён",
    "code_customer_unknown": "неизвестен",
    "code_request_received": "получен",
    "code_request_in_progress": "выполняется",
    "code_request_completed": "выполнен",
    "code_request_rejected": "отклонён",
    "code_requester_customer": "клиент",
    "code_requester_operator": "оператор",
    "code_requester_retention": "срок хранения",
    "code_identity_email": "эл. почта",
    "code_identity_phone": "телефон",
    "code_identity_external_id": "внешний id",
    "code_identity_profile": "профиль",
}

CATALOGS: dict[str, dict[str, str]] = {"en": EN, "ru": RU}
