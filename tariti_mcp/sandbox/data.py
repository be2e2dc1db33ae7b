"""Deterministic seeded data for the sandbox: an amoCRM account and a Moizvonki call log.

The same seed on the same Moscow day always gives the same users, deals, contacts and past calls.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

MOSCOW = ZoneInfo("Europe/Moscow")
ACCOUNT_ID = 31000001
STAFF_DOMAIN = "tariti.example.com"
RECORDINGS_URL = "https://sandbox.moizvonki.invalid/recordings"
WON_STATUS_ID = 142
LOST_STATUS_ID = 143
PHONE_CODES = ("916", "926", "903", "985")
CRM_HISTORY_DAYS = 180


class Call(NamedTuple):
    """One call as the phone logged it; owner and SIM fields are looked up from `user_id`."""

    db_call_id: int
    user_id: int
    direction: int
    client_number: str
    client_name: str
    start_time: int
    answer_time: int
    end_time: int
    duration: int
    answered: int
    upload_time: int
    has_recording: bool


@dataclass
class Employee:
    """A Moizvonki employee; the same person is an amoCRM user with `amocrm_user_id`."""

    id: int
    display_name: str
    email: str
    group_id: int
    group_name: str
    role: str
    src_number: str
    src_id: int
    src_slot: int
    amocrm_user_id: int
    is_active: bool = True


@dataclass
class SandboxData:
    """Everything both emulators serve; amoCRM entities are dicts in the API's read shape."""

    seed: int
    now: float
    day_start: int
    day_end: int
    days: int
    account: dict[str, Any]
    users: list[dict[str, Any]]
    pipelines: list[dict[str, Any]]
    custom_fields: dict[str, list[dict[str, Any]]]
    tags: dict[str, list[dict[str, Any]]]
    contacts: list[dict[str, Any]]
    companies: list[dict[str, Any]]
    leads: list[dict[str, Any]]
    notes: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    employees: list[Employee]
    groups: list[dict[str, Any]]
    sms_templates: list[dict[str, Any]]
    calls: list[Call] = field(repr=False)

    @property
    def admin(self) -> Employee:
        return next(employee for employee in self.employees if employee.role == "admin")


# Surnames as (male, female); the ones ending in -ко and -ук do not change with gender.
SURNAMES = (
    ("Иванов", "Иванова"),
    ("Смирнов", "Смирнова"),
    ("Кузнецов", "Кузнецова"),
    ("Попов", "Попова"),
    ("Васильев", "Васильева"),
    ("Петров", "Петрова"),
    ("Соколов", "Соколова"),
    ("Михайлов", "Михайлова"),
    ("Новиков", "Новикова"),
    ("Фёдоров", "Фёдорова"),
    ("Морозов", "Морозова"),
    ("Волков", "Волкова"),
    ("Алексеев", "Алексеева"),
    ("Лебедев", "Лебедева"),
    ("Семёнов", "Семёнова"),
    ("Егоров", "Егорова"),
    ("Павлов", "Павлова"),
    ("Козлов", "Козлова"),
    ("Степанов", "Степанова"),
    ("Николаев", "Николаева"),
    ("Орлов", "Орлова"),
    ("Андреев", "Андреева"),
    ("Макаров", "Макарова"),
    ("Никитин", "Никитина"),
    ("Захаров", "Захарова"),
    ("Зайцев", "Зайцева"),
    ("Соловьёв", "Соловьёва"),
    ("Борисов", "Борисова"),
    ("Яковлев", "Яковлева"),
    ("Григорьев", "Григорьева"),
    ("Романов", "Романова"),
    ("Воробьёв", "Воробьёва"),
    ("Королёв", "Королёва"),
    ("Гусев", "Гусева"),
    ("Киселёв", "Киселёва"),
    ("Белов", "Белова"),
    ("Вишневский", "Вишневская"),
    ("Покровский", "Покровская"),
    ("Толстой", "Толстая"),
    ("Шевченко", "Шевченко"),
    ("Ковальчук", "Ковальчук"),
    ("Бондаренко", "Бондаренко"),
)
MALE_NAMES = (
    "Александр",
    "Дмитрий",
    "Максим",
    "Сергей",
    "Андрей",
    "Алексей",
    "Артём",
    "Илья",
    "Кирилл",
    "Михаил",
    "Никита",
    "Роман",
    "Егор",
    "Иван",
    "Павел",
    "Владимир",
    "Николай",
    "Олег",
    "Евгений",
    "Константин",
    "Виктор",
    "Денис",
    "Георгий",
    "Тимур",
)
FEMALE_NAMES = (
    "Анна",
    "Мария",
    "Елена",
    "Ольга",
    "Наталья",
    "Екатерина",
    "Татьяна",
    "Ирина",
    "Светлана",
    "Юлия",
    "Анастасия",
    "Дарья",
    "Ксения",
    "Марина",
    "Виктория",
    "Полина",
    "Алина",
    "Вероника",
    "Людмила",
    "Надежда",
)
# Latin spellings for e-mail local parts, keyed by the Cyrillic letter.
TRANSLIT = {
    "а": "a",
    "б": "b",
    "в": "v",
    "г": "g",
    "д": "d",
    "е": "e",
    "ё": "e",
    "ж": "zh",
    "з": "z",
    "и": "i",
    "й": "y",
    "к": "k",
    "л": "l",
    "м": "m",
    "н": "n",
    "о": "o",
    "п": "p",
    "р": "r",
    "с": "s",
    "т": "t",
    "у": "u",
    "ф": "f",
    "х": "kh",
    "ц": "ts",
    "ч": "ch",
    "ш": "sh",
    "щ": "shch",
    "ъ": "",
    "ы": "y",
    "ь": "",
    "э": "e",
    "ю": "yu",
    "я": "ya",
}
STAFF = (
    # (first name, surname, is female, group index, role)
    ("Ольга", "Соколова", True, 0, "admin"),
    ("Дмитрий", "Орлов", False, 0, "user"),
    ("Анна", "Лебедева", True, 0, "user"),
    ("Сергей", "Никитин", False, 0, "user"),
    ("Екатерина", "Морозова", True, 1, "user"),
    ("Артём", "Зайцев", False, 1, "user"),
)
GROUPS = (
    (1101, "Отдел продаж", "Новые клиенты и входящие заявки"),
    (1102, "Отдел сопровождения", "Повторные продажи и тендеры"),
)
COMPANY_ROOTS = (
    "Вектор",
    "Альянс",
    "СтройИнвест",
    "ТехноПром",
    "Северная звезда",
    "Меридиан",
    "Гранит",
    "Спектр",
    "Прогресс",
    "Эталон",
    "Оптима",
    "Горизонт",
    "Ресурс",
    "Импульс",
    "Атлант",
    "Вертикаль",
    "Магистраль",
    "Профиль",
    "Волга",
    "Урал",
    "Балтика",
    "Кристалл",
    "Полюс",
    "Аврора",
    "Сфера",
    "Континент",
    "Зенит",
    "Агрокомплекс",
    "Медтехника",
    "Энергосбыт",
)
COMPANY_SUFFIXES = ("", " Групп", " Трейд", "-М", " Логистик", " Сервис")
COMPANY_FORMS = ("ООО", "ООО", "ООО", "АО", "ПАО")
STREETS = (
    "Тверская",
    "Профсоюзная",
    "Ленинградский пр-т",
    "Новослободская",
    "Большая Ордынка",
    "Варшавское ш.",
    "Садовая-Кудринская",
    "Бауманская",
    "Мясницкая",
    "Шаболовка",
)
PRODUCTS = (
    "Поставка оборудования",
    "Монтаж вентиляции",
    "Годовое обслуживание",
    "Лицензии 1С",
    "Аренда спецтехники",
    "Разработка сайта",
    "Пробная партия",
    "Расширение договора",
    "Комплексное оснащение офиса",
    "Пусконаладка",
    "Обучение персонала",
    "Поставка расходников",
)
PIPELINES = (
    # (name, is_main, working statuses)
    (
        "Основная воронка",
        True,
        (
            "Первичный контакт",
            "Переговоры",
            "Принимают решение",
            "Согласование договора",
            "Ожидание оплаты",
        ),
    ),
    (
        "Повторные продажи",
        False,
        ("Связаться", "Предложение отправлено", "Счёт выставлен", "Ожидание оплаты"),
    ),
    (
        "Тендеры",
        False,
        ("Изучение документации", "Заявка подана", "Рассмотрение заявки", "Подписание контракта"),
    ),
)
STATUS_COLORS = ("#99ccff", "#ffff99", "#ffcc66", "#ffcccc", "#deff81", "#87f2c0")
SOURCE_CHOICES = ("Сайт", "Входящий звонок", "Рекомендация", "Выставка", "Холодный обзвон")
UTM_SOURCES = ("yandex", "google", "vk", "telegram", "email")
UTM_MEDIUMS = ("cpc", "cpm", "organic", "referral", "newsletter")
LEAD_TAGS = ("VIP", "Повторный", "Сайт", "Входящий звонок", "Тендер", "Опт", "Срочно")
CONTACT_TAGS = ("ЛПР", "Бухгалтерия", "Не звонить до 10", "Постоянный клиент")
COMPANY_TAGS = ("Ключевой клиент", "Госсектор", "Дилер")
POSITIONS = (
    "Генеральный директор",
    "Коммерческий директор",
    "Менеджер по закупкам",
    "Главный инженер",
    "Бухгалтер",
    "Офис-менеджер",
    "Руководитель отдела",
    "Специалист по тендерам",
)
PLAIN_COMMENTS = (
    "Предпочитает связь в мессенджере",
    "Просил не звонить до обеда",
    "Решения принимает вместе с директором",
    "Интересовался скидкой за объём",
    "Бывший клиент конкурентов",
)
NOTE_TEXTS = (
    "Клиент просил перезвонить после обеда",
    "Отправили коммерческое предложение на почту",
    "Согласовали встречу в офисе клиента",
    "Клиент сравнивает с предложением конкурента",
    "Ждём подписанный договор от юристов",
    "Уточнили объём поставки и сроки",
)
TASK_TEXTS = (
    "Перезвонить клиенту",
    "Отправить КП",
    "Уточнить статус оплаты",
    "Подготовить договор",
    "Назначить встречу",
)
SMS_TEMPLATES = (
    (
        1,
        "Реквизиты",
        "Реквизиты для оплаты отправили на вашу почту. {company}",
        "После выставления счёта",
    ),
    (
        2,
        "Напоминание о встрече",
        "Напоминаем о встрече {date} в {time}. {manager}",
        "За день до встречи",
    ),
    (
        3,
        "Спасибо за звонок",
        "Спасибо за звонок! Ваш менеджер {manager}, телефон {phone}.",
        "После первого разговора",
    ),
)
PHONE_ENUMS = ("WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER")
EMAIL_ENUMS = ("WORK", "PRIV", "OTHER")
# The ways people type the same Moscow mobile number into a CRM card.
PHONE_STYLES = (
    "+7 ({c}) {a}-{b}-{d}",
    "8 {c} {a} {b} {d}",
    "7{c}{a}{b}{d}",
    "+7{c}{a}{b}{d}",
    "8({c}){a}{b}{d}",
)


def generate(
    seed: int = 1, calls: int = 3000, days: int = 60, now: float | None = None
) -> SandboxData:
    """Build the sandbox data for `seed`; calls cover the `days` Moscow days ending today."""
    if now is None:
        now = time.time()
    today = dt.datetime.fromtimestamp(now, MOSCOW).date()
    day_start = _moscow_midnight(today)
    day_end = _moscow_midnight(today + dt.timedelta(days=1))

    # Separate streams keep the CRM identical whatever number of calls is asked for.
    crm_rng = random.Random(f"tariti-sandbox:{seed}:crm")
    call_rng = random.Random(f"tariti-sandbox:{seed}:calls")

    employees, users = _staff(day_start)
    groups = [{"id": gid, "name": name, "description": text} for gid, name, text in GROUPS]
    pipelines = _pipelines(day_start)
    custom_fields = _custom_fields()
    tags = _tags()
    contacts = _contacts(crm_rng, custom_fields["contacts"], tags["contacts"], users, day_start)
    companies = _companies(
        crm_rng, custom_fields["companies"], tags["companies"], users, contacts, day_start
    )
    leads = _leads(
        crm_rng,
        custom_fields["leads"],
        tags["leads"],
        pipelines,
        users,
        contacts,
        companies,
        day_start,
    )
    notes = _notes(crm_rng, leads, contacts, day_start)
    tasks = _tasks(crm_rng, leads, day_start)

    clients = _client_pool(call_rng, contacts, employees)
    day_starts = [
        _moscow_midnight(today - dt.timedelta(days=back)) for back in range(days - 1, -1, -1)
    ]
    call_log = _calls(call_rng, calls, employees, clients, day_starts + [day_end])
    call_log = [call for call in call_log if call.upload_time <= now]

    admin = next(employee for employee in employees if employee.role == "admin")
    account = {
        "id": ACCOUNT_ID,
        "name": "Тарити (песочница)",
        "subdomain": "tariti-sandbox",
        "created_at": day_start - 900 * 86400,
        "created_by": 0,
        "updated_at": day_start - 30 * 86400,
        "updated_by": admin.amocrm_user_id,
        "current_user_id": admin.amocrm_user_id,
        "country": "RU",
        "currency": "RUB",
        "currency_symbol": "₽",
        "customers_mode": "disabled",
        "is_unsorted_on": True,
        "mobile_feature_version": 0,
        "is_loss_reason_enabled": True,
        "is_helpbot_enabled": False,
        "is_technical_account": False,
        "contact_name_display_order": 1,
    }
    return SandboxData(
        seed=seed,
        now=now,
        day_start=day_start,
        day_end=day_end,
        days=days,
        account=account,
        users=users,
        pipelines=pipelines,
        custom_fields=custom_fields,
        tags=tags,
        contacts=contacts,
        companies=companies,
        leads=leads,
        notes=notes,
        tasks=tasks,
        employees=employees,
        groups=groups,
        sms_templates=[
            {"id": tid, "name": name, "text": text, "description": about}
            for tid, name, text, about in SMS_TEMPLATES
        ],
        calls=call_log,
    )


def digits_only(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def format_phone(ten_digits: str, style: int) -> str:
    """Write a 10-digit Russian number the way style number `style` of PHONE_STYLES does."""
    code, rest = ten_digits[:3], ten_digits[3:]
    return PHONE_STYLES[style].format(c=code, a=rest[:3], b=rest[3:5], d=rest[5:])


def _moscow_midnight(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=MOSCOW).timestamp())


def _latin(text: str) -> str:
    return "".join(TRANSLIT.get(ch, ch) for ch in text.lower())


def _staff(day_start: int) -> tuple[list[Employee], list[dict[str, Any]]]:
    employees, users = [], []
    for index, (first, last, _female, group_index, role) in enumerate(STAFF):
        amocrm_id = 6100001 + index
        email = f"{_latin(first)[0]}.{_latin(last)}@{STAFF_DOMAIN}"
        group_id, group_name, _ = GROUPS[group_index]
        employees.append(
            Employee(
                id=57301 + index * 7,
                display_name=f"{first} {last}",
                email=email,
                group_id=group_id,
                group_name=group_name,
                role=role,
                src_number=f"+7926500{index + 1:02d}{(index * 37) % 100:02d}",
                # Emulator's choice: src_id is a numeric device id and every phone has one SIM slot.
                src_id=880101 + index,
                src_slot=0,
                amocrm_user_id=amocrm_id,
            )
        )
        is_admin = role == "admin"
        rights_level = "A" if is_admin else "M"
        users.append(
            {
                "id": amocrm_id,
                "name": f"{first} {last}",
                "email": email,
                "lang": "ru",
                "rights": {
                    "leads": {
                        "view": rights_level,
                        "edit": rights_level,
                        "add": "A",
                        "delete": "A" if is_admin else "D",
                        "export": "A" if is_admin else "D",
                    },
                    "contacts": {
                        "view": "A",
                        "edit": "A",
                        "add": "A",
                        "delete": "A" if is_admin else "D",
                        "export": "A" if is_admin else "D",
                    },
                    "companies": {
                        "view": "A",
                        "edit": "A",
                        "add": "A",
                        "delete": "A" if is_admin else "D",
                        "export": "A" if is_admin else "D",
                    },
                    "tasks": {"edit": "A", "delete": "A" if is_admin else "D"},
                    "mail_access": True,
                    "catalog_access": is_admin,
                    "is_admin": is_admin,
                    "is_free": False,
                    "is_active": True,
                    "group_id": 0 if is_admin else group_id,
                    "role_id": None,
                },
            }
        )
    return employees, users


def _pipelines(day_start: int) -> list[dict[str, Any]]:
    pipelines = []
    status_id = 41000001
    for index, (name, is_main, working) in enumerate(PIPELINES):
        pipeline_id = 7100001 + index
        statuses = [_status(status_id, "Неразобранное", 10, pipeline_id, "#c1c1c1", 1, False)]
        status_id += 1
        for position, status_name in enumerate(working):
            color = STATUS_COLORS[position % len(STATUS_COLORS)]
            statuses.append(
                _status(status_id, status_name, 20 + position * 10, pipeline_id, color, 0, True)
            )
            status_id += 1
        statuses.append(
            _status(WON_STATUS_ID, "Успешно реализовано", 10000, pipeline_id, "#CCFF66", 0, False)
        )
        statuses.append(
            _status(
                LOST_STATUS_ID, "Закрыто и не реализовано", 11000, pipeline_id, "#D5D8DB", 0, False
            )
        )
        pipelines.append(
            {
                "id": pipeline_id,
                "name": name,
                "sort": (index + 1) * 100,
                "is_main": is_main,
                "is_unsorted_on": True,
                "is_archive": False,
                "account_id": ACCOUNT_ID,
                "_embedded": {"statuses": statuses},
            }
        )
    return pipelines


def _status(
    status_id: int, name: str, sort: int, pipeline_id: int, color: str, kind: int, editable: bool
) -> dict[str, Any]:
    return {
        "id": status_id,
        "name": name,
        "sort": sort,
        "is_editable": editable,
        "pipeline_id": pipeline_id,
        "color": color,
        "type": kind,
        "account_id": ACCOUNT_ID,
    }


def _custom_fields() -> dict[str, list[dict[str, Any]]]:
    # A definition names its code `code`; values on entities name it `field_code`.
    enum_ids = iter(range(812001, 813000))

    def define(
        field_id: int,
        entity_type: str,
        name: str,
        kind: str,
        code: str | None,
        sort: int,
        enums: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        return {
            "id": field_id,
            "name": name,
            "type": kind,
            "code": code,
            "sort": sort,
            "is_api_only": False,
            "is_predefined": code in ("PHONE", "EMAIL", "POSITION"),
            "is_deletable": code not in ("PHONE", "EMAIL", "POSITION"),
            "is_visible": True,
            "is_required": False,
            "remind": None,
            "settings": None,
            "group_id": None,
            "required_statuses": [],
            "entity_type": entity_type,
            "account_id": ACCOUNT_ID,
            "enums": [
                {"id": next(enum_ids), "value": value, "sort": (position + 1) * 2}
                for position, value in enumerate(enums)
            ]
            or None,
        }

    leads = [
        define(243001 + index * 2, "leads", code.lower(), "tracking_data", code, 500 + index)
        for index, code in enumerate(
            ("UTM_SOURCE", "UTM_MEDIUM", "UTM_CAMPAIGN", "UTM_CONTENT", "UTM_TERM")
        )
    ]
    leads.append(define(243021, "leads", "Источник", "select", None, 510, SOURCE_CHOICES))
    contacts = [
        define(318001, "contacts", "Должность", "text", "POSITION", 2),
        define(318003, "contacts", "Телефон", "multitext", "PHONE", 4, PHONE_ENUMS),
        define(318005, "contacts", "Email", "multitext", "EMAIL", 6, EMAIL_ENUMS),
        define(318011, "contacts", "Комментарий", "textarea", None, 20),
    ]
    companies = [
        define(426003, "companies", "Телефон", "multitext", "PHONE", 4, PHONE_ENUMS),
        define(426005, "companies", "Email", "multitext", "EMAIL", 6, EMAIL_ENUMS),
        define(426007, "companies", "Web", "url", "WEB", 8),
        define(426009, "companies", "Адрес", "textarea", "ADDRESS", 10),
    ]
    return {"leads": leads, "contacts": contacts, "companies": companies}


def _tags() -> dict[str, list[dict[str, Any]]]:
    def listing(first_id: int, names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {"id": first_id + index, "name": name, "color": None}
            for index, name in enumerate(names)
        ]

    return {
        "leads": listing(70001, LEAD_TAGS),
        "contacts": listing(80001, CONTACT_TAGS),
        "companies": listing(90001, COMPANY_TAGS),
    }


def field_value(definition: dict[str, Any], values: list[dict[str, Any]]) -> dict[str, Any]:
    """A custom field value in amoCRM's read shape."""
    return {
        "field_id": definition["id"],
        "field_name": definition["name"],
        "field_code": definition["code"],
        "field_type": definition["type"],
        "values": values,
    }


def enum_value(definition: dict[str, Any], value: str, enum: str) -> dict[str, Any]:
    """One value of an enum field, chosen by enum code (multitext) or by enum text (select)."""
    for choice in definition["enums"]:
        if choice["value"] == enum:
            if definition["type"] == "multitext":
                return {"value": value, "enum_id": choice["id"], "enum_code": enum}
            return {"value": value, "enum_id": choice["id"], "enum_code": None}
    raise KeyError(enum)


def _by_code(
    definitions: list[dict[str, Any]], code: str | None, name: str | None = None
) -> dict[str, Any]:
    for definition in definitions:
        if (code is not None and definition["code"] == code) or (
            name is not None and definition["name"] == name
        ):
            return definition
    raise KeyError(code or name)


def _person(rng: random.Random) -> tuple[str, str, bool]:
    female = rng.random() < 0.45
    first = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
    last = rng.choice(SURNAMES)[1 if female else 0]
    return first, last, female


def _entity_times(rng: random.Random, day_start: int) -> tuple[int, int]:
    created_at = day_start - rng.randrange(60, CRM_HISTORY_DAYS * 86400)
    updated_at = created_at + rng.randrange(0, day_start - created_at)
    return created_at, updated_at


def _responsible(rng: random.Random, users: list[dict[str, Any]]) -> int:
    # Managers own most records; the admin (first user) owns a few.
    return users[0]["id"] if rng.random() < 0.08 else rng.choice(users[1:])["id"]


def _contacts(
    rng: random.Random,
    definitions: list[dict[str, Any]],
    tags: list[dict[str, Any]],
    users: list[dict[str, Any]],
    day_start: int,
) -> list[dict[str, Any]]:
    phone_field = _by_code(definitions, "PHONE")
    email_field = _by_code(definitions, "EMAIL")
    position_field = _by_code(definitions, "POSITION")
    comment_field = _by_code(definitions, None, "Комментарий")
    used_numbers: set[str] = set()

    def new_number() -> str:
        while True:
            number = rng.choice(PHONE_CODES) + f"{rng.randrange(10**7):07d}"
            if number not in used_numbers:
                used_numbers.add(number)
                return number

    contacts = []
    phones_of: list[list[str]] = []
    for index in range(300):
        first, last, _female = _person(rng)
        created_at, updated_at = _entity_times(rng, day_start)
        numbers = [new_number() for _ in range(2 if rng.random() < 0.2 else 1)]
        phones_of.append(numbers)
        phone_values = [
            enum_value(
                phone_field,
                format_phone(number, rng.randrange(len(PHONE_STYLES))),
                "WORK" if position == 0 and rng.random() < 0.4 else "MOB",
            )
            for position, number in enumerate(numbers)
        ]
        values = [field_value(phone_field, phone_values)]
        if rng.random() < 0.6:
            domain = rng.choice(("mail.example.com", "corp.example.net", "example.org"))
            address = f"{_latin(first)}.{_latin(last)}{rng.randrange(1, 99)}@{domain}"
            values.append(
                field_value(
                    email_field,
                    [
                        enum_value(
                            email_field, address, "WORK" if domain.startswith("corp") else "PRIV"
                        )
                    ],
                )
            )
        if rng.random() < 0.5:
            values.append(field_value(position_field, [{"value": rng.choice(POSITIONS)}]))
        if rng.random() < 0.2:
            values.append(field_value(comment_field, [{"value": rng.choice(PLAIN_COMMENTS)}]))
        contact_tags = [dict(tag) for tag in rng.sample(tags, 1)] if rng.random() < 0.15 else []
        contacts.append(
            {
                "id": 21500001 + index * 3 + rng.randrange(3),
                "name": f"{first} {last}",
                "first_name": first,
                "last_name": last,
                "responsible_user_id": _responsible(rng, users),
                "group_id": 0,
                "created_by": 0,
                "updated_by": 0,
                "created_at": created_at,
                "updated_at": updated_at,
                "closest_task_at": None,
                "is_deleted": False,
                "is_unsorted": False,
                "custom_fields_values": values,
                "account_id": ACCOUNT_ID,
                "_embedded": {"tags": contact_tags, "companies": [], "leads": []},
            }
        )

    # A handful of comments quote another client's number: a digit search hits them too.
    referrers = rng.sample(range(len(contacts)), 6)
    for referrer in referrers:
        other = rng.choice([index for index in range(len(contacts)) if index != referrer])
        text = f"Рекомендовал клиент с номером {phones_of[other][0]}, сослаться на него"
        values = [
            value
            for value in contacts[referrer]["custom_fields_values"]
            if value["field_id"] != comment_field["id"]
        ]
        values.append(field_value(comment_field, [{"value": text}]))
        contacts[referrer]["custom_fields_values"] = values
    return contacts


def _companies(
    rng: random.Random,
    definitions: list[dict[str, Any]],
    tags: list[dict[str, Any]],
    users: list[dict[str, Any]],
    contacts: list[dict[str, Any]],
    day_start: int,
) -> list[dict[str, Any]]:
    phone_field = _by_code(definitions, "PHONE")
    web_field = _by_code(definitions, "WEB")
    address_field = _by_code(definitions, "ADDRESS")
    names = sorted({root + suffix for root in COMPANY_ROOTS for suffix in COMPANY_SUFFIXES})
    chosen = rng.sample(names, 40)
    members = rng.sample(range(len(contacts)), 120)
    companies = []
    for index, root in enumerate(chosen):
        form = rng.choice(COMPANY_FORMS)
        created_at, updated_at = _entity_times(rng, day_start)
        office = f"495{rng.randrange(10**7):07d}"
        values = [
            field_value(phone_field, [enum_value(phone_field, format_phone(office, 0), "WORK")])
        ]
        if rng.random() < 0.7:
            slug = _latin(root.split()[0].strip("-"))
            values.append(field_value(web_field, [{"value": f"https://{slug}.example.ru"}]))
        if rng.random() < 0.5:
            values.append(
                field_value(
                    address_field,
                    [{"value": f"г. Москва, {rng.choice(STREETS)}, д. {rng.randrange(1, 120)}"}],
                )
            )
        company_id = 23100001 + index * 2
        company = {
            "id": company_id,
            "name": f"{form} «{root}»",
            "responsible_user_id": _responsible(rng, users),
            "group_id": 0,
            "created_by": 0,
            "updated_by": 0,
            "created_at": created_at,
            "updated_at": updated_at,
            "closest_task_at": None,
            "is_deleted": False,
            "custom_fields_values": values,
            "account_id": ACCOUNT_ID,
            "_embedded": {
                "tags": [dict(tag) for tag in rng.sample(tags, 1)] if rng.random() < 0.2 else [],
                "contacts": [],
                "leads": [],
            },
        }
        for member in members[index * 3 : index * 3 + 3]:
            contacts[member]["_embedded"]["companies"] = [{"id": company_id}]
            company["_embedded"]["contacts"].append({"id": contacts[member]["id"]})
        companies.append(company)
    return companies


def _leads(
    rng: random.Random,
    definitions: list[dict[str, Any]],
    tags: list[dict[str, Any]],
    pipelines: list[dict[str, Any]],
    users: list[dict[str, Any]],
    contacts: list[dict[str, Any]],
    companies: list[dict[str, Any]],
    day_start: int,
) -> list[dict[str, Any]]:
    utm_fields = {
        code: _by_code(definitions, code)
        for code in ("UTM_SOURCE", "UTM_MEDIUM", "UTM_CAMPAIGN", "UTM_CONTENT", "UTM_TERM")
    }
    source_field = _by_code(definitions, None, "Источник")
    company_by_id = {company["id"]: company for company in companies}
    contact_by_id = {contact["id"]: contact for contact in contacts}
    leads = []
    lead_id = 31700001
    for _ in range(400):
        lead_id += rng.randrange(1, 4)
        pipeline = rng.choices(pipelines, weights=(70, 20, 10))[0]
        statuses = pipeline["_embedded"]["statuses"]
        roll = rng.random()
        if roll < 0.25:
            status = statuses[-2]
        elif roll < 0.45:
            status = statuses[-1]
        elif roll < 0.48:
            status = statuses[0]
        else:
            status = rng.choice(statuses[1:-2])
        created_at, updated_at = _entity_times(rng, day_start)
        closed_at = None
        if status["id"] in (WON_STATUS_ID, LOST_STATUS_ID):
            closed_at = created_at + rng.randrange(0, day_start - created_at)
            updated_at = max(updated_at, closed_at)

        contact = rng.choice(contacts)
        company_links = contact["_embedded"]["companies"]
        company = company_by_id[company_links[0]["id"]] if company_links else None
        if company is None and rng.random() < 0.15:
            company = rng.choice(companies)
        customer = company["name"] if company else contact["name"]

        values = []
        if rng.random() < 0.5:
            source = rng.choice(UTM_SOURCES)
            utm = {
                "UTM_SOURCE": source,
                "UTM_MEDIUM": rng.choice(UTM_MEDIUMS),
                "UTM_CAMPAIGN": f"{source}_{rng.choice(('spring', 'brand', 'retarget'))}",
            }
            if rng.random() < 0.3:
                utm["UTM_TERM"] = rng.choice(("купить оборудование", "монтаж", "цена"))
            values = [
                field_value(utm_fields[code], [{"value": text}]) for code, text in utm.items()
            ]
        if rng.random() < 0.7:
            choice = rng.choice(SOURCE_CHOICES)
            values.append(field_value(source_field, [enum_value(source_field, choice, choice)]))

        lead_tags = [dict(tag) for tag in rng.sample(tags, rng.choice((0, 0, 1, 2)))]
        lead_contacts = [{"id": contact["id"], "is_main": True}]
        if rng.random() < 0.1:
            second = rng.choice(contacts)
            if second["id"] != contact["id"]:
                lead_contacts.append({"id": second["id"], "is_main": False})
        for linked in lead_contacts:
            contact_by_id[linked["id"]]["_embedded"]["leads"].append({"id": lead_id})
        if company is not None:
            company["_embedded"]["leads"].append({"id": lead_id})
        leads.append(
            {
                "id": lead_id,
                "name": f"{rng.choice(PRODUCTS)} — {customer}",
                "price": rng.randrange(15, 2500) * 1000 + rng.choice((0, 0, 500)),
                "responsible_user_id": _responsible(rng, users),
                "group_id": 0,
                "status_id": status["id"],
                "pipeline_id": pipeline["id"],
                "loss_reason_id": None,
                "created_by": 0,
                "updated_by": 0,
                "created_at": created_at,
                "updated_at": updated_at,
                "closed_at": closed_at,
                "closest_task_at": None,
                "is_deleted": False,
                "custom_fields_values": values or None,
                "score": None,
                "account_id": ACCOUNT_ID,
                "labor_cost": None,
                "_embedded": {
                    "tags": lead_tags,
                    "companies": [{"id": company["id"]}] if company else [],
                    "contacts": lead_contacts,
                },
            }
        )
    return leads


def _notes(
    rng: random.Random, leads: list[dict[str, Any]], contacts: list[dict[str, Any]], day_start: int
) -> list[dict[str, Any]]:
    notes = []
    note_id = 95000001
    for entity_type, records in (("leads", leads), ("contacts", contacts)):
        for record in rng.sample(records, 80):
            created_at = record["created_at"] + rng.randrange(0, day_start - record["created_at"])
            notes.append(
                {
                    "id": note_id,
                    "entity_id": record["id"],
                    "entity_type": entity_type,
                    "created_by": record["responsible_user_id"],
                    "updated_by": record["responsible_user_id"],
                    "created_at": created_at,
                    "updated_at": created_at,
                    "responsible_user_id": record["responsible_user_id"],
                    "group_id": 0,
                    "note_type": "common",
                    "params": {"text": rng.choice(NOTE_TEXTS)},
                    "account_id": ACCOUNT_ID,
                }
            )
            note_id += rng.randrange(1, 5)
    return notes


def _tasks(rng: random.Random, leads: list[dict[str, Any]], day_start: int) -> list[dict[str, Any]]:
    open_leads = [lead for lead in leads if lead["closed_at"] is None]
    tasks = []
    for index, lead in enumerate(rng.sample(open_leads, min(60, len(open_leads)))):
        complete_till = day_start + rng.randrange(-5 * 86400, 10 * 86400)
        created_at = min(complete_till, day_start) - rng.randrange(3600, 7 * 86400)
        tasks.append(
            {
                "id": 4100001 + index * 2,
                "created_by": lead["responsible_user_id"],
                "updated_by": lead["responsible_user_id"],
                "created_at": created_at,
                "updated_at": created_at,
                "responsible_user_id": lead["responsible_user_id"],
                "group_id": 0,
                "entity_id": lead["id"],
                "entity_type": "leads",
                "duration": 0,
                "is_completed": complete_till < day_start and rng.random() < 0.6,
                "task_type_id": rng.choice((1, 2)),
                "text": rng.choice(TASK_TEXTS),
                "result": [],
                "complete_till": complete_till,
                "account_id": ACCOUNT_ID,
            }
        )
    return tasks


class _Client(NamedTuple):
    plus_form: str
    eight_form: str
    name: str | None
    home: int


def _client_pool(
    rng: random.Random, contacts: list[dict[str, Any]], employees: list[Employee]
) -> list[_Client]:
    """About 400 callers: most are CRM contacts, some strangers, a few short local lines."""
    crm_numbers = []
    for contact in contacts:
        for value in contact["custom_fields_values"]:
            if value["field_code"] == "PHONE":
                crm_numbers.extend(
                    (digits_only(item["value"])[-10:], contact["name"]) for item in value["values"]
                )
    pool = []
    homes = list(range(len(employees)))
    home_weights = [0.3 if employee.role == "admin" else 1.0 for employee in employees]
    for number, name in rng.sample(crm_numbers, 240):
        home = rng.choices(homes, weights=home_weights)[0]
        known = name if rng.random() < 0.6 else None
        pool.append(_Client("+7" + number, "8" + number, known, home))
    stranger_codes = ("915", "925", "977", "999", "495", "499")
    while len(pool) < 395:
        number = rng.choice(stranger_codes) + f"{rng.randrange(10**7):07d}"
        home = rng.choices(homes, weights=home_weights)[0]
        first, last, _ = _person(rng)
        known = f"{first} {last}" if rng.random() < 0.3 else None
        pool.append(_Client("+7" + number, "8" + number, known, home))
    for _ in range(5):
        local = f"{rng.randrange(2, 10)}{rng.randrange(10**6):06d}"
        pool.append(_Client(local, local, None, rng.randrange(len(employees))))
    return pool


def _cumulative(weights: list[float]) -> list[float]:
    total, running = 0.0, []
    for weight in weights:
        total += weight
        running.append(total)
    return running


# Relative call volume per Moscow hour: the working day dominates, nights are nearly silent.
HOUR_WEIGHTS = [
    0.02,
    0.01,
    0.01,
    0.01,
    0.01,
    0.02,
    0.05,
    0.2,
    0.5,
    1.0,
    1.0,
    1.0,
    1.0,
    0.7,
    1.0,
    1.0,
    1.0,
    1.0,
    0.9,
    0.7,
    0.25,
    0.12,
    0.06,
    0.03,
]


def _calls(
    rng: random.Random,
    count: int,
    employees: list[Employee],
    clients: list[_Client],
    midnights: list[int],
) -> list[Call]:
    """Generate `count` calls; `midnights` bounds each Moscow day (one more than the days)."""
    day_weights = []
    for midnight in midnights[:-1]:
        weekday = dt.datetime.fromtimestamp(midnight, MOSCOW).weekday()
        day_weights.append({5: 0.35, 6: 0.2}.get(weekday, 1.0))
    day_picks = rng.choices(range(len(day_weights)), cum_weights=_cumulative(day_weights), k=count)
    hour_picks = rng.choices(range(24), cum_weights=_cumulative(HOUR_WEIGHTS), k=count)
    # Some callers ring often: weight the pool by a falling rank curve.
    client_picks = rng.choices(
        clients,
        cum_weights=_cumulative([1 / (rank + 3) ** 0.8 for rank in range(len(clients))]),
        k=count,
    )
    staff_weights = _cumulative(
        [0.35 if employee.role == "admin" else 1.0 for employee in employees]
    )

    rows: list[tuple[Any, ...]] = []
    produced = 0
    while produced < count:
        midnight = midnights[day_picks[produced]]
        day_length = midnights[day_picks[produced] + 1] - midnight
        start = midnight + min(hour_picks[produced] * 3600 + rng.randrange(3600), day_length - 1)
        client = client_picks[produced]
        produced += 1

        if rng.random() < 0.012 and produced < count:
            # Colleagues calling each other: one outgoing and one incoming record.
            caller, callee = rng.sample(employees, 2)
            talk = _talk_time(rng)
            ring = rng.randint(3, 15)
            rows.append(
                _row(
                    rng,
                    caller,
                    1,
                    callee.src_number,
                    callee.display_name,
                    start,
                    start,
                    start + ring + talk,
                    ring + talk,
                    1,
                )
            )
            rows.append(
                _row(
                    rng,
                    callee,
                    0,
                    caller.src_number,
                    caller.display_name,
                    start,
                    start + ring,
                    start + ring + talk,
                    talk,
                    1,
                )
            )
            produced += 1
            continue

        if rng.random() < 0.75:
            owner = employees[client.home]
        else:
            owner = employees[rng.choices(range(len(employees)), cum_weights=staff_weights)[0]]
        direction = 0 if rng.random() < 0.45 else 1
        if direction == 0 and rng.random() < 0.012:
            number, name = "", ""
        else:
            number = client.plus_form if direction == 0 or rng.random() < 0.5 else client.eight_form
            name = client.name or number

        if direction == 0:
            if rng.random() < 0.75:
                answer = start + rng.randint(3, 25)
                talk = _talk_time(rng)
                rows.append(
                    _row(rng, owner, 0, number, name, start, answer, answer + talk, talk, 1)
                )
            else:
                ring = rng.randint(5, 40)
                rows.append(_row(rng, owner, 0, number, name, start, 0, start + ring, 0, 0))
        else:
            ring = rng.randint(5, 40)
            if rng.random() < 0.6:
                # The phone cannot see the pick-up: answer_time is the start, duration rings too.
                duration = ring + _talk_time(rng)
                rows.append(
                    _row(rng, owner, 1, number, name, start, start, start + duration, duration, 1)
                )
            else:
                rows.append(_row(rng, owner, 1, number, name, start, 0, start + ring, ring, 0))

    rows.sort(key=lambda row: (row[0], row[1]))
    db_call_id = 2_400_000 + rng.randrange(1000)
    log = []
    for row in rows:
        db_call_id += rng.randint(1, 5)
        upload, start, user_id, direction, number, name, answer, end, duration, answered, rec = row
        log.append(
            Call(
                db_call_id,
                user_id,
                direction,
                number,
                name,
                start,
                answer,
                end,
                duration,
                answered,
                upload,
                rec,
            )
        )
    return log


def _talk_time(rng: random.Random) -> int:
    return max(4, min(3600, int(rng.lognormvariate(4.1, 1.0))))


def _row(
    rng: random.Random,
    owner: Employee,
    direction: int,
    number: str,
    name: str,
    start: int,
    answer: int,
    end: int,
    duration: int,
    answered: int,
) -> tuple[Any, ...]:
    # Most phones upload within a minute; some were offline and upload hours later.
    if rng.random() < 0.05:
        upload = end + rng.randint(3600, 9 * 3600)
    else:
        upload = end + rng.randint(2, 60)
    has_recording = bool(answered) and rng.random() < 0.7
    return (
        upload,
        start,
        owner.id,
        direction,
        number,
        name,
        answer,
        end,
        duration,
        answered,
        has_recording,
    )
