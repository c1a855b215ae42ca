"""Synthetic, realistic screening events, deterministic for a seed.

Events are plain dicts in the wire-native form used on the hot path: Avro logical types are
not converted (``date`` = int days since 1970-01-01, ``timestamp-millis`` = int epoch
milliseconds, uuid = str, enums = symbol str, nullable fields None or a value). Keys are
exactly the field names of ``schemas/screening_event.v1.avsc`` (plus the v2 fields with
``schema_version=2``), in schema order.

Every draw comes from one ``random.Random(seed)``: the same settings give the same events.
No real person's data is involved: names come from small lists of common French names and
every identifier (NIR, RPPS, FINESS, phone) is drawn at random with valid structure.
"""

from __future__ import annotations

import random
import uuid
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import accumulate
from typing import Final

from streams.domain.geography import COMMUNES, Commune
from streams.domain.nir import complete_nir
from streams.errors import ConfigError

__all__ = ["DEFAULT_SETTINGS", "GeneratorSettings", "generate_events"]

_MS_PER_HOUR: Final = 3_600_000
_MS_PER_DAY: Final = 24 * _MS_PER_HOUR
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_DAYS_PER_YEAR: Final = 365.2425
_INDETERMINATE_SHARE: Final = 0.01


@dataclass(frozen=True)
class GeneratorSettings:
    """How many of which events to draw; validated on construction (ConfigError)."""

    seed: int = 0
    positive_share: float = 0.15  # the rest mostly NEGATIVE, ~1% INDETERMINATE
    non_production_share: float = 0.02  # share of T / D processing modes
    schema_version: int = 1
    start_ms: int = 1_593_561_600_000  # 2020-07-01T00:00Z: samples spread over the following days
    days: int = 60

    def __post_init__(self) -> None:
        """Reject settings that cannot produce a sensible stream."""
        if not 0.0 <= self.positive_share <= 1.0 - _INDETERMINATE_SHARE:
            raise ConfigError("positive_share must be between 0 and 0.99")
        if not 0.0 <= self.non_production_share <= 1.0:
            raise ConfigError("non_production_share must be between 0 and 1")
        if self.schema_version not in (1, 2):
            raise ConfigError("schema_version must be 1 or 2")
        if self.days < 1:
            raise ConfigError("days must be at least 1")


DEFAULT_SETTINGS: Final = GeneratorSettings()

# -- small built-in lists (display form, ASCII lower-case form for e-mail addresses) --------
# fmt: off

_LAST_NAMES: Final = (
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois",
    "Moreau", "Laurent", "Simon", "Michel", "Lefèvre", "Leroy", "Roux", "David", "Bertrand",
    "Morel", "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau",
    "Vincent", "Muller", "Lefebvre", "Faure", "André", "Mercier", "Blanc", "Guérin", "Boyer",
    "Garnier", "Chevalier", "François", "Legrand", "Gauthier", "Garcia", "Perrin", "Robin",
    "Clément", "Morin", "Nicolas", "Henry", "Roussel", "Mathieu", "Gautier", "Masson",
    "Marchand", "Duval", "Denis", "Dumont", "Marie", "Lemaire", "Noël", "Meyer", "Dufour",
    "Meunier", "Brun", "Blanchard", "Giraud", "Joly", "Rivière", "Lucas", "Brunet", "Gaillard",
    "Barbier", "Arnaud", "Nguyen", "Hoarau", "Payet", "Le Gall", "Le Goff", "Santini",
)
_MALE_FIRST: Final = (
    "Jean", "Pierre", "Michel", "André", "Philippe", "Alain", "Bernard", "Jacques", "Daniel",
    "Christophe", "Nicolas", "Stéphane", "Laurent", "Julien", "David", "Sébastien", "Thomas",
    "Antoine", "Maxime", "Alexandre", "Hugo", "Lucas", "Louis", "Gabriel", "Léo", "Arthur",
    "Jules", "Adam", "Mohamed", "Karim", "Yanis", "Nathan", "Théo", "Paul", "François", "Éric",
)
_FEMALE_FIRST: Final = (
    "Marie", "Nathalie", "Isabelle", "Sylvie", "Catherine", "Françoise", "Monique", "Martine",
    "Christine", "Sophie", "Sandrine", "Céline", "Julie", "Aurélie", "Camille", "Laura", "Léa",
    "Manon", "Chloé", "Emma", "Jade", "Louise", "Alice", "Inès", "Sarah", "Anne", "Hélène",
    "Valérie", "Jeanne", "Fatima", "Amina", "Élodie", "Claire", "Lucie", "Océane", "Zoé",
)
_STREETS: Final = (
    "rue de la République", "avenue Jean Jaurès", "rue Victor Hugo", "boulevard Gambetta",
    "place de la Mairie", "rue Pasteur", "chemin des Vignes", "allée des Tilleuls",
    "rue du Général de Gaulle", "rue de la Gare", "impasse des Lilas", "rue Jules Ferry",
    "avenue de la Libération", "rue des Écoles", "route de Paris", "rue du Moulin",
    "rue de l'Église", "avenue du Maréchal Foch", "rue Émile Zola", "quai des Bateliers",
)
_EMAIL_DOMAINS: Final = (
    "gmail.com", "orange.fr", "free.fr", "hotmail.fr", "laposte.net", "sfr.fr", "yahoo.fr",
    "outlook.fr", "wanadoo.fr", "icloud.com",
)
_PRO_EMAIL_DOMAINS: Final = ("medecin.mssante.fr", "pharmacien.mssante.fr", "ch-mssante.fr")
# INSEE country codes (born abroad: "99" + 3 digits): Morocco, Algeria, Tunisia, Portugal,
# Italy, Spain, Germany, Belgium, United Kingdom, Senegal, Mali, Côte d'Ivoire, Cameroon,
# Comoros, Turkey, China, Viet Nam, Romania, Poland, Haiti.
_COUNTRIES: Final = (
    "350", "352", "351", "139", "127", "134", "109", "131", "132", "341", "335", "326",
    "322", "397", "208", "216", "243", "114", "122", "410",
)
# Age bands (first age, last age, weight): skewed to working-age adults.
_AGE_BANDS: Final = (
    (0, 9, 5), (10, 19, 10), (20, 29, 17), (30, 39, 16), (40, 49, 15), (50, 59, 14),
    (60, 69, 10), (70, 79, 7), (80, 89, 5), (90, 100, 1),
)
# fmt: on
_HOUSING_LINE: Final = {
    "NURSING_HOME": "EHPAD Les Tilleuls",
    "DISABILITY_HOME": "Foyer d'accueil médicalisé",
    "PRISON": "Centre pénitentiaire",
    "OTHER": "Résidence collective",
}


def _ascii_lower(text: str) -> str:
    """Fold a French name to ASCII lower case for e-mail addresses (é -> e, space -> -)."""
    table = str.maketrans("àâäçéèêëîïôöùûüÿœÉÈ ", "aaaceeeeiioouuuyoee-")
    return text.translate(table).lower().replace("'", "")


def _with_ascii(names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Pair each name with its ASCII lower-case form."""
    return tuple((name, _ascii_lower(name)) for name in names)


_LAST: Final = _with_ascii(_LAST_NAMES)
_MALE: Final = _with_ascii(_MALE_FIRST)
_FEMALE: Final = _with_ascii(_FEMALE_FIRST)

# A prescriber: RPPS, last name, first name, phone, e-mail, organisation FINESS.
_Prescriber = tuple[str, str, str, str | None, str | None, str]
_NO_PRESCRIBER: Final = (None, None, None, None, None, None)


class _EventFactory:
    """Draws one event at a time from a seeded RNG and precomputed tables."""

    def __init__(self, settings: GeneratorSettings) -> None:
        """Precompute the weighted tables; all randomness comes from ``settings.seed``."""
        self._settings = settings
        self._rng = random.Random(settings.seed)
        self._communes: tuple[Commune, ...] = COMMUNES
        self._commune_cum = list(accumulate(c.weight for c in COMMUNES))
        self._age_cum = list(accumulate(weight for _, _, weight in _AGE_BANDS))
        self._labs: dict[str, tuple[str, ...]] = {}
        self._prescribers: dict[str, tuple[_Prescriber, ...]] = {}

    # -- helpers ----------------------------------------------------------------------------

    def _commune(self) -> Commune:
        """Draw a commune, weighted by population."""
        cum = self._commune_cum
        return self._communes[bisect_right(cum, self._rng.random() * cum[-1])]

    def _age(self) -> int:
        """Draw an age in completed years, 0-100, skewed to adults."""
        rng = self._rng
        cum = self._age_cum
        low, high, _ = _AGE_BANDS[bisect_right(cum, rng.random() * cum[-1])]
        return low + int(rng.random() * (high - low + 1))

    def _digits(self, count: int) -> str:
        """Draw ``count`` random decimal digits."""
        return f"{self._rng.randrange(10**count):0{count}d}"

    def _finess(self, department: str) -> str:
        """Draw a 9-character FINESS number starting with the department code."""
        return department + self._digits(9 - len(department))

    def _lab(self, department: str) -> str:
        """Pick one of a few laboratories of the department (created on first use)."""
        labs = self._labs.get(department)
        if labs is None:
            labs = tuple(self._finess(department) for _ in range(4))
            self._labs[department] = labs
        return self._rng.choice(labs)

    def _prescriber(self, department: str) -> _Prescriber:
        """Pick one of the department's prescribers (a pool created on first use)."""
        pool = self._prescribers.get(department)
        if pool is None:
            pool = tuple(self._new_prescriber(department) for _ in range(25))
            self._prescribers[department] = pool
        return self._rng.choice(pool)

    def _new_prescriber(self, department: str) -> _Prescriber:
        """Create a prescribing professional: RPPS (11 digits), names, phone, e-mail, FINESS."""
        rng = self._rng
        last, last_ascii = rng.choice(_LAST)
        first, first_ascii = rng.choice(_MALE if rng.random() < 0.5 else _FEMALE)
        phone = f"0{rng.randint(1, 5)}{self._digits(8)}" if rng.random() < 0.95 else None
        email = f"{first_ascii}.{last_ascii}@{rng.choice(_PRO_EMAIL_DOMAINS)}" if rng.random() < 0.85 else None
        return ("10" + self._digits(9), last, first, phone, email, self._finess(department))

    def _collective_housing(self, age: int) -> str:
        """Draw the collective-housing kind: mostly NONE, nursing homes for the oldest."""
        u = self._rng.random()
        kinds: tuple[tuple[float, str], ...]
        if age >= 75:
            kinds = ((0.22, "NURSING_HOME"), (0.225, "DISABILITY_HOME"), (0.235, "OTHER"))
        elif age >= 60:
            kinds = ((0.02, "NURSING_HOME"), (0.03, "DISABILITY_HOME"), (0.04, "OTHER"))
        elif age >= 18:
            kinds = ((0.01, "DISABILITY_HOME"), (0.018, "PRISON"), (0.033, "OTHER"))
        else:
            kinds = ((0.005, "DISABILITY_HOME"), (0.015, "OTHER"))
        for threshold, kind in kinds:
            if u < threshold:
                return kind
        return "NONE"

    # -- one event --------------------------------------------------------------------------

    def event(self) -> dict[str, object]:
        """Draw one wire-native screening event."""
        settings = self._settings
        rng = self._rng
        r = rng.random
        commune = self._commune()
        department = commune.department
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))

        # Test: mode, kind, result, times.
        mode = "P"
        if r() < settings.non_production_share:
            mode = "T" if r() < 0.75 else "D"
        u = r()
        if u < settings.positive_share:
            result = "POSITIVE"
        elif u < settings.positive_share + _INDETERMINATE_SHARE:
            result = "INDETERMINATE"
        else:
            result = "NEGATIVE"
        u = r()
        if u < 0.62:
            kind, min_hours, max_hours = "RT_PCR", 4.0, 48.0
        elif u < 0.95:
            kind, min_hours, max_hours = "ANTIGEN", 0.25, 2.0
        elif u < 0.97:
            kind, min_hours, max_hours = "RT_LAMP", 2.0, 24.0
        else:
            kind, min_hours, max_hours = "SEROLOGY", 2.0, 72.0
        day = int(r() * settings.days)
        sampled_at = settings.start_ms + day * _MS_PER_DAY + int((7.0 + 12.0 * r()) * _MS_PER_HOUR)
        hours = min_hours + (max_hours - min_hours) * r()
        validated_at = sampled_at + int(hours * _MS_PER_HOUR)
        emitted_at = validated_at + 1_000 + int(r() * 1_200_000)
        sampled_day = sampled_at // _MS_PER_DAY

        # Identity: sex, birth date, NIR consistent with both and with a birth place.
        male = r() < 0.47
        age = self._age()
        birth_day = sampled_day - int((age + r()) * _DAYS_PER_YEAR)
        born = date.fromordinal(_EPOCH_ORDINAL + birth_day)
        u = r()
        if u < 0.70:
            birth_place = commune.insee_code
        elif u < 0.90:
            birth_place = self._commune().insee_code
        else:
            birth_place = "99" + rng.choice(_COUNTRIES)
        nir = complete_nir(
            f"{'1' if male else '2'}{born.year % 100:02d}{born.month:02d}{birth_place}{1 + int(r() * 999):03d}"
        )
        last, last_ascii = rng.choice(_LAST)
        firsts = _MALE if male else _FEMALE
        first, first_ascii = rng.choice(firsts)
        first_names = f"{first} {rng.choice(firsts)[0]}" if r() < 0.2 else first

        # Contact.
        u = r()
        if u < 0.75:
            phone: str | None = f"0{6 if r() < 0.7 else 7}{self._digits(8)}"
        elif u < 0.88:
            phone = f"0{rng.randint(1, 5)}{self._digits(8)}"
        else:
            phone = None
        email: str | None = None
        if r() < 0.55:
            suffix = str(int(r() * 100)) if r() < 0.4 else ""
            email = f"{first_ascii}.{last_ascii}{suffix}@{rng.choice(_EMAIL_DOMAINS)}"
        housing = self._collective_housing(age)
        address_lines = [f"{1 + int(r() * 150)} {rng.choice(_STREETS)}"]
        if housing != "NONE":
            address_lines.insert(0, _HOUSING_LINE[housing])
        elif r() < 0.25:
            flat = f"Bâtiment {'ABCD'[int(r() * 4)]}, appartement {1 + int(r() * 80)}"
            address_lines.append(flat)

        # Situation.
        u = r()
        if result == "POSITIVE":
            symptomatic = True if u < 0.55 else (False if u < 0.85 else None)
        else:
            symptomatic = True if u < 0.22 else (False if u < 0.85 else None)
        # Onset a few days before sampling, never before birth (newborns).
        onset = max(birth_day, sampled_day - int(r() * 8)) if symptomatic and r() < 0.9 else None

        # Prescriber (about 70%).
        prescriber: tuple[str | None, ...] = _NO_PRESCRIBER
        if r() < 0.7:
            prescriber = self._prescriber(department)
        rpps, p_last, p_first, p_phone, p_email, p_org = prescriber

        event: dict[str, object] = {
            "event_id": event_id,
            "emitted_at": emitted_at,
            "lab_finess": self._lab(department),
            "processing_mode": mode,
            "nir": nir,
            "last_name": last,
            "first_names": first_names,
            "sex": "M" if male else "F",
            "birth_date": birth_day,
            "phone": phone,
            "email": email,
            "address_lines": address_lines,
            "postcode": commune.postcode,
            "city": commune.name,
            "commune_code": commune.insee_code,
            "health_care_worker": 20 <= age <= 65 and r() < 0.07,
            "collective_housing": housing,
            "symptomatic": symptomatic,
            "symptom_onset_date": onset,
            "prescriber_rpps": rpps,
            "prescriber_last_name": p_last,
            "prescriber_first_name": p_first,
            "prescriber_phone": p_phone,
            "prescriber_email": p_email,
            "prescriber_org_finess": p_org,
            "test_kind": kind,
            "sampled_at": sampled_at,
            "validated_at": validated_at,
            "result": result,
        }
        if settings.schema_version >= 2:
            event["variant_screening"] = self._variant(result)
            event["vaccination_status"] = self._vaccination(age)
        return event

    def _variant(self, result: str) -> str | None:
        """Draw the v2 variant-screening outcome: screened positives, NOT_SCREENED otherwise."""
        r = self._rng.random
        if r() < 0.08:
            return None
        if result != "POSITIVE":
            return "NOT_SCREENED"
        u = r()
        if u < 0.35:
            return "VARIANT_OF_CONCERN"
        if u < 0.75:
            return "NO_VARIANT_DETECTED"
        return "OTHER_VARIANT" if u < 0.80 else "NOT_SCREENED"

    def _vaccination(self, age: int) -> str | None:
        """Draw the v2 vaccination status (children mostly unvaccinated)."""
        r = self._rng.random
        if r() < 0.08:
            return None
        u = r()
        if age < 12 or u < 0.30:
            return "UNVACCINATED"
        if u < 0.40:
            return "PARTIAL"
        if u < 0.78:
            return "COMPLETE"
        return "BOOSTER" if u < 0.92 else "UNKNOWN"


def generate_events(count: int, settings: GeneratorSettings = DEFAULT_SETTINGS) -> Iterator[dict[str, object]]:
    """Yield ``count`` synthetic wire-native screening events, deterministic for the settings.

    Raises :class:`~streams.errors.ConfigError` at once (not on first iteration) when
    ``count`` is negative.
    """
    if count < 0:
        raise ConfigError("count must not be negative")
    factory = _EventFactory(settings)
    return (factory.event() for _ in range(count))
