"""The demo connector's tables: CRM objects shaped like Salesforce, HubSpot CRM v3 and Dynamics 365.

Each table splits a row into its identity (what never changes: ids, names, created time) and
a version (everything else, redrawn on every update). Both draw from the ``random`` function
they are given, a fixed number of draws per row, and use precomputed pools and string tables
so that a row costs a few microseconds.
"""

from __future__ import annotations

import datetime as dt
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from random import Random
from typing import Any, ClassVar, TypeVar

from aam_dcl.messages import Record

Draw = Callable[[], float]
Ident = tuple[Any, ...]  # element 0 is the created minute; the rest is table-specific
T = TypeVar("T")

# --- time: minutes since 2020-01-01T00:00Z, formatted from precomputed tables ----------------
_BASE = dt.date(2020, 1, 1)
_FIRST_DAY = -365 * 80  # dates from 1940 (birthdates) to 2044 come from a table
_DAYS = [(_BASE + dt.timedelta(days=n)).isoformat() for n in range(_FIRST_DAY, 365 * 25)]
_TIMES = [f"T{h:02d}:{m:02d}:00Z" for h in range(24) for m in range(60)]
EPOCH_MIN = (dt.date(2025, 11, 4) - _BASE).days * 1440  # generation 0 ends here
HISTORY_MIN = 730 * 1440  # generation 0 rows were created within two years before EPOCH_MIN


def day(n: int) -> str:
    """ISO date of day ``n`` since 2020-01-01."""
    i = n - _FIRST_DAY
    return _DAYS[i] if 0 <= i < len(_DAYS) else (_BASE + dt.timedelta(days=n)).isoformat()


def ts(minute: int) -> str:
    """ISO datetime (UTC, ``Z``) of ``minute`` since 2020-01-01T00:00Z."""
    return day(minute // 1440) + _TIMES[minute % 1440]


def pick(draw: Draw, pool: Sequence[T]) -> T:
    return pool[int(draw() * len(pool))]


def money(draw: Draw, low: int, high: int) -> float:
    """An amount with two decimals between ``low`` and ``high``."""
    return (low * 100 + int(draw() * (high - low) * 100)) / 100


# --- identifiers -------------------------------------------------------------------------------
_B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_UPPER = [10 <= i < 36 for i in range(62)]
_PAIRS = [
    (a + b, _UPPER[i] | _UPPER[j] << 1) for i, a in enumerate(_B62) for j, b in enumerate(_B62)
]
_SF_CHECK = string.ascii_uppercase + "012345"
_SF_SPACE = 62**5


def _sf_flags(chunk: str) -> int:
    return sum(1 << j for j, c in enumerate(chunk) if c.isupper())


class SalesforceIds:
    """18-character Salesforce ids (key prefix, pod, counter, case-safe checksum); one per row."""

    def __init__(self, key_prefix: str, salt: int) -> None:
        head = key_prefix + "5g00000"
        self._head = head
        self._check = _SF_CHECK[_sf_flags(head[:5])] + _SF_CHECK[_sf_flags(head[5:])]
        self._salt = salt % _SF_SPACE

    def __call__(self, index: int) -> str:
        # An odd multiplier coprime to 62**5 scrambles the counter and keeps it one-to-one.
        n = (index * 2_654_435_761 + self._salt) % _SF_SPACE
        p, r = divmod(n, 3844)
        q, s = divmod(p, 3844)
        (s_text, s_flags), (r_text, r_flags) = _PAIRS[s], _PAIRS[r]
        flags = _UPPER[q] | s_flags << 1 | r_flags << 3
        return f"{self._head}{_B62[q]}{s_text}{r_text}{self._check}{_SF_CHECK[flags]}"


class Guids:
    """Dataverse-style GUIDs (version 4 layout), a one-to-one function of the row number."""

    _MULT = 0x9E3779B97F4A7C15F39CC0605CEDC835  # odd: multiplication mod 2**128 is a bijection

    def __init__(self, salt: int) -> None:
        self._salt = salt

    def __call__(self, index: int) -> str:
        h = f"{((index + self._salt) * self._MULT) & ((1 << 128) - 1):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


# --- pools -----------------------------------------------------------------------------------
FIRST = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Carlos", "Karen", "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Sandra", "Mark",
    "Ashley", "Priya", "Emily", "Wei", "Olivia", "Ahmed", "Sofia", "Lukas", "Emma", "Kenji",
    "Aisha", "Mateo", "Chloe"
)  # fmt: skip
LAST = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker",
    "Young", "Allen", "King", "Wright", "Nguyen", "Patel", "Schmidt", "Rossi", "Tanaka",
    "Kowalski", "Dubois", "Okafor"
)  # fmt: skip
_ADJ = (
    "Acme", "Apex", "Blue", "Bright", "Cedar", "Crystal", "Delta", "Eagle", "Evergreen", "Falcon",
    "Global", "Granite", "Harbor", "Horizon", "Iron", "Keystone", "Lakeside", "Liberty", "Maple",
    "Meridian", "Northwind", "Nova", "Oak", "Orion", "Pacific", "Peak", "Pinnacle", "Prime",
    "Quantum", "Redwood", "Silver", "Summit", "Sun", "Titan", "United", "Vertex", "Vista",
    "Zenith"
)  # fmt: skip
_NOUN = (
    "Analytics", "Bank", "Biotech", "Capital", "Logistics", "Consulting", "Dynamics", "Energy",
    "Foods", "Freight", "Health", "Industries", "Insurance", "Labs", "Learning", "Manufacturing",
    "Media", "Medical", "Motors", "Networks", "Partners", "Pharma", "Retail", "Robotics",
    "Software", "Solutions", "Systems", "Telecom", "Textiles", "Travel", "Ventures", "Works"
)  # fmt: skip
_SUFFIX = ("Inc.", "LLC", "Ltd.", "GmbH", "Corp.", "Group", "Holdings", "Co.")
CITIES = (
    ("San Francisco", "CA", "United States"), ("New York", "NY", "United States"),
    ("Austin", "TX", "United States"), ("Chicago", "IL", "United States"),
    ("Seattle", "WA", "United States"), ("Boston", "MA", "United States"),
    ("Toronto", "ON", "Canada"), ("London", None, "United Kingdom"),
    ("Berlin", None, "Germany"), ("Paris", None, "France"), ("Sydney", "NSW", "Australia"),
    ("Tokyo", None, "Japan"), ("Singapore", None, "Singapore"), ("Dublin", None, "Ireland"),
)  # fmt: skip
STREETS = ("Main St", "Market St", "Oak Ave", "Park Blvd", "Mission St", "High St", "King Rd")
TITLES = (
    "CEO", "CFO", "CTO", "VP Sales", "VP Marketing", "Director of IT", "Head of Operations",
    "Procurement Manager", "Sales Manager", "Software Engineer", "Account Executive",
)  # fmt: skip
PRODUCTS = (
    "Enterprise License", "Platform Upgrade", "Support Renewal", "Analytics Add-on",
    "Professional Services", "Cloud Migration", "Data Integration", "Security Suite",
    "Training Package", "Expansion Seats",
)  # fmt: skip
LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")


class Pools:
    """Seed-dependent naming: company ``j`` always has the same name, domain and city."""

    def __init__(self, seed: int) -> None:
        rng = Random(f"{seed}:pools")
        adj, noun = rng.sample(_ADJ, len(_ADJ)), rng.sample(_NOUN, len(_NOUN))
        combos = [(a, n, s) for s in _SUFFIX for n in noun for a in adj]
        self._names = [f"{a} {n} {s}" for a, n, s in combos]
        self._domains = [f"{a}{n}".lower() for a, n, _ in combos]
        self._period = len(combos)
        self._offset = rng.randrange(self._period)

    def _slot(self, j: int) -> int:
        return (j * 7919 + self._offset) % self._period  # 7919 is prime: a permutation

    def company(self, j: int) -> str:
        name = self._names[self._slot(j)]
        return name if j < self._period else f"{name} {j // self._period + 1}"

    def domain(self, j: int) -> str:
        domain = self._domains[self._slot(j)]
        return f"{domain}.com" if j < self._period else f"{domain}{j // self._period + 1}.com"

    def city(self, j: int) -> tuple[str, str | None, str]:
        return CITIES[(j * 31 + self._offset) % len(CITIES)]


def phone(draw: Draw) -> str:
    return f"+1 {200 + int(draw() * 800)}-555-{1000 + int(draw() * 9000)}"


class DemoTable(ABC):
    """One table of a flavor; ``records`` is the base row count of every table of the flavor."""

    name: ClassVar[str]
    primary_key: ClassVar[tuple[str, ...]]

    def __init__(self, pools: Pools, records: int) -> None:
        self.pools = pools
        self.records = max(records, 1)  # rows other tables may refer to

    @abstractmethod
    def identity(self, draw: Draw, index: int, created: int) -> Ident:
        """The fields of row ``index`` that never change; element 0 must be ``created``."""

    @abstractmethod
    def version(
        self, draw: Draw, index: int, ident: Ident, modified: int, generation: int
    ) -> Record:
        """A full record of the row, its mutable fields redrawn, last modified at ``modified``."""


# --- Salesforce (REST API objects, snake_case columns as in the configuration guide) ---------
SF_STAGES = (  # the standard StageName picklist: (value, probability %, forecast category)
    ("Prospecting", 10, "Pipeline"), ("Qualification", 10, "Pipeline"),
    ("Needs Analysis", 20, "Pipeline"), ("Value Proposition", 50, "Pipeline"),
    ("Id. Decision Makers", 60, "Pipeline"), ("Perception Analysis", 70, "Best Case"),
    ("Proposal/Price Quote", 75, "Best Case"), ("Negotiation/Review", 90, "Commit"),
    ("Closed Won", 100, "Closed"), ("Closed Lost", 0, "Omitted"),
)  # fmt: skip
SF_ACCOUNT_TYPES = (
    "Customer - Direct", "Customer - Channel", "Prospect", "Channel Partner / Reseller",
    "Technology Partner", "Other",
)  # fmt: skip
SF_INDUSTRIES = (
    "Banking", "Biotechnology", "Communications", "Consulting", "Education", "Energy",
    "Finance", "Healthcare", "Insurance", "Manufacturing", "Media", "Retail", "Technology",
)  # fmt: skip
SF_NEXT_STEPS = ("Send proposal", "Schedule demo", "Legal review", "Follow up call", None)


class SalesforceAccounts(DemoTable):
    name = "accounts"
    primary_key = ("account_id",)
    ids = SalesforceIds("001", 0x2C81F3D)

    def identity(self, draw: Draw, index: int, created: int) -> Ident:
        city, state, country = self.pools.city(index)
        address = {
            "street": f"{1 + int(draw() * 9000)} {pick(draw, STREETS)}",
            "city": city,
            "state": state,
            "postal_code": f"{10000 + int(draw() * 89999)}",
            "country": country,
        }
        return created, address, pick(draw, SF_INDUSTRIES)

    def version(
        self, draw: Draw, index: int, ident: Ident, modified: int, generation: int
    ) -> Record:
        return {
            "account_id": self.ids(index),
            "name": self.pools.company(index),
            "type": pick(draw, SF_ACCOUNT_TYPES),
            "industry": ident[2],
            "annual_revenue": money(draw, 100_000, 500_000_000) if draw() < 0.9 else None,
            "number_of_employees": 5 + int(draw() * 20_000),
            "phone": phone(draw),
            "website": f"https://www.{self.pools.domain(index)}",
            "billing_address": ident[1],
            "created_at": ts(ident[0]),
            "last_modified_at": ts(modified),
        }


class SalesforceContacts(DemoTable):
    name = "contacts"
    primary_key = ("contact_id",)
    ids = SalesforceIds("003", 0x1A7E093)

    def identity(self, draw: Draw, index: int, created: int) -> Ident:
        first, last, account = pick(draw, FIRST), pick(draw, LAST), int(draw() * self.records)
        birthdate = day(-365 * 20 - int(draw() * 365 * 40) + EPOCH_MIN // 1440)
        return created, first, last, account, birthdate if draw() < 0.7 else None

    def version(
        self, draw: Draw, index: int, ident: Ident, modified: int, generation: int
    ) -> Record:
        _, first, last, account, birthdate = ident
        return {
            "contact_id": self.ids(index),
            "account_id": SalesforceAccounts.ids(account),
            "first_name": first,
            "last_name": last,
            "email": f"{first}.{last}{index}@{self.pools.domain(account)}".lower(),
            "title": pick(draw, TITLES),
            "phone": phone(draw) if draw() < 0.85 else None,
            "birthdate": birthdate,
            "lead_source": pick(draw, LEAD_SOURCES),
            "has_opted_out_of_email": draw() < 0.1,
            "created_at": ts(ident[0]),
            "last_modified_at": ts(modified),
        }


class SalesforceOpportunities(DemoTable):
    name = "opportunities"
    primary_key = ("opportunity_id",)
    ids = SalesforceIds("006", 0x3B0C5E1)

    def identity(self, draw: Draw, index: int, created: int) -> Ident:
        return created, int(draw() * self.records), pick(draw, PRODUCTS)

    def version(
        self, draw: Draw, index: int, ident: Ident, modified: int, generation: int
    ) -> Record:
        created, account, product = ident
        stage, probability, forecast = pick(draw, SF_STAGES)
        closed = stage.startswith("Closed")
        account_name = self.pools.company(account)
        return {
            "opportunity_id": self.ids(index),
            "opportunity_name": f"{account_name} - {product}",
            "account_id": SalesforceAccounts.ids(account),
            "account_name": account_name,
            "stage": stage,
            "amount": money(draw, 1_000, 750_000),
            "probability": probability,
            "close_date": f"{day(created // 1440 + 14 + int(draw() * 180))}T00:00:00Z",
            "is_closed": closed,
            "is_won": stage == "Closed Won",
            "forecast_category": forecast,
            "lead_source": pick(draw, LEAD_SOURCES),
            "next_step": None if closed else pick(draw, SF_NEXT_STEPS),
            "created_at": ts(created),
            "last_modified_at": ts(modified),
        }


# --- HubSpot CRM v3 (object properties, converted to typed values) ----------------------------
HS_STAGES = (  # the default sales pipeline: (dealstage, hs_deal_stage_probability)
    ("appointmentscheduled", 0.2), ("qualifiedtobuy", 0.4), ("presentationscheduled", 0.6),
    ("decisionmakerboughtin", 0.8), ("contractsent", 0.9), ("closedwon", 1.0),
    ("closedlost", 0.0),
)  # fmt: skip
HS_LIFECYCLE = (
    "subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity",
    "customer", "evangelist", "other",
)  # fmt: skip
HS_INDUSTRIES = (
    "COMPUTER_SOFTWARE", "FINANCIAL_SERVICES", "HOSPITAL_HEALTH_CARE", "RETAIL", "INSURANCE",
    "TELECOMMUNICATIONS", "INFORMATION_TECHNOLOGY_AND_SERVICES", "MARKETING_AND_ADVERTISING",
    "LOGISTICS_AND_SUPPLY_CHAIN", "BIOTECHNOLOGY",
)  # fmt: skip
HS_OWNERS = (52_310_874, 52_310_902, 61_004_177, 61_004_210, 73_558_016)
HS_COMPANY_ID = 18_000_000_000
HS_CONTACT_ID = 51_000_000_000
HS_DEAL_ID = 15_000_000_000


class HubSpotDeals(DemoTable):
    name = "deals"
    primary_key = ("hs_object_id",)

    def identity(self, draw: Draw, index: int, created: int) -> Ident:
        company = int(draw() * self.records)
        contacts = [HS_CONTACT_ID + int(draw() * self.records) for _ in range(1 + int(draw() * 3))]
        associations = {"companies": [HS_COMPANY_ID + company], "contacts": contacts}
        return created, f"{self.pools.company(company)} - {pick(draw, PRODUCTS)}", associations

    def version(
        self, draw: Draw, index: int, ident: Ident, modified: int, generation: int
    ) -> Record:
        created, dealname, associations = ident
        stage, probability = pick(draw, HS_STAGES)
        return {
            "hs_object_id": HS_DEAL_ID + index,
            "dealname": dealname,
            "pipeline": "default",
            "dealstage": stage,
            "hs_deal_stage_probability": probability,
            "amount": money(draw, 500, 250_000) if draw() < 0.95 else None,
            "closedate": ts((created // 1440 + 7 + int(draw() * 120)) * 1440 + 17 * 60),
            "hs_is_closed_won": stage == "closedwon",
            "hubspot_owner_id": pick(draw, HS_OWNERS),
            "associations": associations,
            "createdate": ts(created),
            "hs_lastmodifieddate": ts(modified),
        }


class HubSpotContacts(DemoTable):
    name = "contacts"
    primary_key = ("hs_object_id",)

    def identity(self, draw: Draw, index: int, created: int) -> Ident:
        return created, pick(draw, FIRST), pick(draw, LAST), int(draw() * self.records)

    def version(
        self, draw: Draw, index: int, ident: Ident, modified: int, generation: int
    ) -> Record:
        created, first, last, company = ident
        return {
            "hs_object_id": HS_CONTACT_ID + index,
            "firstname": first,
            "lastname": last,
            "email": f"{first}.{last}{index}@{self.pools.domain(company)}".lower(),
            "phone": phone(draw) if draw() < 0.8 else None,
            "company": self.pools.company(company),
            "jobtitle": pick(draw, TITLES),
            "lifecyclestage": pick(draw, HS_LIFECYCLE),
            "hs_email_optout": draw() < 0.08,
            "createdate": ts(created),
            "lastmodifieddate": ts(modified),
        }


class HubSpotCompanies(DemoTable):
    name = "companies"
    primary_key = ("hs_object_id",)

    def identity(self, draw: Draw, index: int, created: int) -> Ident:
        return created, pick(draw, HS_INDUSTRIES)

    def version(
        self, draw: Draw, index: int, ident: Ident, modified: int, generation: int
    ) -> Record:
        city, state, country = self.pools.city(index)
        return {
            "hs_object_id": HS_COMPANY_ID + index,
            "name": self.pools.company(index),
            "domain": self.pools.domain(index),
            "industry": ident[1],
            "city": city,
            "state": state,
            "country": country,
            "numberofemployees": 5 + int(draw() * 20_000),
            "annualrevenue": money(draw, 100_000, 900_000_000) if draw() < 0.8 else None,
            "lifecyclestage": pick(draw, HS_LIFECYCLE),
            "createdate": ts(ident[0]),
            "hs_lastmodifieddate": ts(modified),
        }


# --- Dynamics 365 / Dataverse Web API (entity sets, logical attribute names) -----------------
DV_OPEN_STEPS = ("1-Qualify", "2-Develop", "3-Propose", "4-Close")
DV_FORECAST = (100_000_001, 100_000_002, 100_000_003)  # pipeline, best case, committed


class DynamicsAccounts(DemoTable):
    name = "accounts"
    primary_key = ("accountid",)
    ids = Guids(0x5A17)

    def identity(self, draw: Draw, index: int, created: int) -> Ident:
        return created, 1 + int(draw() * 33)  # industrycode: an option set value

    def version(
        self, draw: Draw, index: int, ident: Ident, modified: int, generation: int
    ) -> Record:
        city, _, country = self.pools.city(index)
        active = draw() < 0.92
        return {
            "accountid": self.ids(index),
            "name": self.pools.company(index),
            "accountnumber": f"ACC-{100_000 + index}",
            "telephone1": phone(draw),
            "emailaddress1": f"info@{self.pools.domain(index)}",
            "websiteurl": f"https://www.{self.pools.domain(index)}",
            "address1_city": city,
            "address1_country": country,
            "industrycode": ident[1],
            "numberofemployees": 5 + int(draw() * 20_000),
            "revenue": money(draw, 100_000, 900_000_000),
            "statecode": 0 if active else 1,  # 0 Active, 1 Inactive
            "statuscode": 1 if active else 2,
            "createdon": ts(ident[0]),
            "modifiedon": ts(modified),
        }


class DynamicsOpportunities(DemoTable):
    name = "opportunities"
    primary_key = ("opportunityid",)
    ids = Guids(0x0990)

    def identity(self, draw: Draw, index: int, created: int) -> Ident:
        account = int(draw() * self.records)
        return created, account, f"{pick(draw, PRODUCTS)} for {self.pools.company(account)}"

    def version(
        self, draw: Draw, index: int, ident: Ident, modified: int, generation: int
    ) -> Record:
        created, account, name = ident
        close_day = created // 1440 + 14 + int(draw() * 180)
        value = money(draw, 1_000, 750_000)
        outcome = draw()  # 0 Open (70%), 1 Won, 2 Lost
        state = 0 if outcome < 0.7 else 1 if outcome < 0.85 else 2
        open_step = pick(draw, DV_OPEN_STEPS)
        return {
            "opportunityid": self.ids(index),
            "name": name,
            "_parentaccountid_value": DynamicsAccounts.ids(account),
            "estimatedvalue": value,
            "estimatedclosedate": day(close_day),
            "closeprobability": (10, 100, 0)[state] if state else 10 + int(draw() * 80),
            "stepname": open_step if state == 0 else "5-Close",
            "statecode": state,
            "statuscode": (1, 3, 5)[state],  # In Progress, Won, Out-Sold
            "actualvalue": value if state == 1 else None,
            "actualclosedate": day(close_day) if state else None,
            "msdyn_forecastcategory": DV_FORECAST[int(outcome * 3) % 3] if state == 0 else None,
            "createdon": ts(created),
            "modifiedon": ts(modified),
        }


Flavor = Callable[[int, int], list[DemoTable]]


def _flavor(*tables: type[DemoTable]) -> Flavor:
    def build(seed: int, records: int) -> list[DemoTable]:
        pools = Pools(seed)
        return [table(pools, records) for table in tables]

    return build


FLAVORS: dict[str, Flavor] = {
    "salesforce": _flavor(SalesforceOpportunities, SalesforceAccounts, SalesforceContacts),
    "hubspot": _flavor(HubSpotDeals, HubSpotContacts, HubSpotCompanies),
    "dynamics": _flavor(DynamicsAccounts, DynamicsOpportunities),
}
