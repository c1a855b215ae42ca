"""French geography for routing: the 18 regions (ARS), their departments, and a commune table.

Routing goes by the commune INSEE code, never by the postcode: the department is the first
2 characters of the commune code (``2A``/``2B`` for Corsica), or the first 3 digits for the
overseas departments (``97x``). A department that maps to no region is not guessed: callers
get None and quarantine the event.

The department -> region table lives in a :class:`Geography` object. The module-level
:data:`DEFAULT_GEOGRAPHY` is what :func:`region_of` uses unless it is handed another one, so
a test or a deployment can extend the table (``DEFAULT_GEOGRAPHY.with_departments(...)``)
without patching module globals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "COMMUNES",
    "DEFAULT_GEOGRAPHY",
    "DEPARTMENT_REGION",
    "REGIONS",
    "Commune",
    "Geography",
    "department_of",
    "region_of",
]

#: INSEE region code -> name, the 18 regions of the regional health agencies (ARS).
REGIONS: Final[dict[str, str]] = {
    "11": "Île-de-France",
    "24": "Centre-Val de Loire",
    "27": "Bourgogne-Franche-Comté",
    "28": "Normandie",
    "32": "Hauts-de-France",
    "44": "Grand Est",
    "52": "Pays de la Loire",
    "53": "Bretagne",
    "75": "Nouvelle-Aquitaine",
    "76": "Occitanie",
    "84": "Auvergne-Rhône-Alpes",
    "93": "Provence-Alpes-Côte d'Azur",
    "94": "Corse",
    "01": "Guadeloupe",
    "02": "Martinique",
    "03": "Guyane",
    "04": "La Réunion",
    "06": "Mayotte",
}

_REGION_DEPARTMENTS: Final[dict[str, tuple[str, ...]]] = {
    "11": ("75", "77", "78", "91", "92", "93", "94", "95"),
    "24": ("18", "28", "36", "37", "41", "45"),
    "27": ("21", "25", "39", "58", "70", "71", "89", "90"),
    "28": ("14", "27", "50", "61", "76"),
    "32": ("02", "59", "60", "62", "80"),
    "44": ("08", "10", "51", "52", "54", "55", "57", "67", "68", "88"),
    "52": ("44", "49", "53", "72", "85"),
    "53": ("22", "29", "35", "56"),
    "75": ("16", "17", "19", "23", "24", "33", "40", "47", "64", "79", "86", "87"),
    "76": ("09", "11", "12", "30", "31", "32", "34", "46", "48", "65", "66", "81", "82"),
    "84": ("01", "03", "07", "15", "26", "38", "42", "43", "63", "69", "73", "74"),
    "93": ("04", "05", "06", "13", "83", "84"),
    "94": ("2A", "2B"),
    "01": ("971",),
    "02": ("972",),
    "03": ("973",),
    "04": ("974",),
    "06": ("976",),
}

#: Department code -> INSEE region code, every department of the 18 regions (101 entries).
DEPARTMENT_REGION: Final[dict[str, str]] = {
    department: region for region, departments in _REGION_DEPARTMENTS.items() for department in departments
}


def department_of(commune_code: str) -> str | None:
    """Return the department of an INSEE commune code, or None when the code is malformed.

    A well-formed code is 5 ASCII digits, or ``2A``/``2B`` followed by 3 digits. The
    department is the first 2 characters, or the first 3 digits for ``97x`` (overseas).
    The result is not checked against any table: ``98735`` gives ``98``.
    """
    if len(commune_code) != 5 or not commune_code.isascii():
        return None
    if commune_code.isdigit():
        return commune_code[:3] if commune_code.startswith("97") else commune_code[:2]
    if commune_code[0] == "2" and commune_code[1] in ("A", "B") and commune_code[2:].isdigit():
        return commune_code[:2]
    return None


class Geography:
    """An immutable department -> region table, with region lookup by commune code."""

    __slots__ = ("_department_region", "_region_names")

    def __init__(
        self,
        department_region: Mapping[str, str],
        region_names: Mapping[str, str] | None = None,
    ) -> None:
        """Copy the tables; prefer :meth:`from_mapping`, which reads the same."""
        names = dict(REGIONS if region_names is None else region_names)
        self._department_region: Mapping[str, str] = MappingProxyType(dict(department_region))
        self._region_names: Mapping[str, str] = MappingProxyType(names)

    @classmethod
    def from_mapping(
        cls,
        department_region: Mapping[str, str],
        region_names: Mapping[str, str] | None = None,
    ) -> Geography:
        """Build a geography from department -> region codes (region names default to REGIONS)."""
        return cls(department_region, region_names)

    def with_departments(self, extra: Mapping[str, str]) -> Geography:
        """Return a new geography with ``extra`` departments added (or re-mapped)."""
        merged = dict(self._department_region)
        merged.update(extra)
        return Geography(merged, self._region_names)

    @property
    def department_region(self) -> Mapping[str, str]:
        """The read-only department -> region code table."""
        return self._department_region

    @property
    def region_names(self) -> Mapping[str, str]:
        """The read-only region code -> name table."""
        return self._region_names

    def region_of_department(self, department: str) -> str | None:
        """Return the region code of a department, or None when the table has none."""
        return self._department_region.get(department)

    def region_of(self, commune_code: str) -> str | None:
        """Return the region code of a commune code; None when malformed or unmapped."""
        department = department_of(commune_code)
        if department is None:
            return None
        return self._department_region.get(department)

    def __repr__(self) -> str:
        """Summarise the table size (the tables themselves are long)."""
        return f"Geography({len(self._department_region)} departments)"


#: The geography of domain.md: 18 regions, 101 departments.
DEFAULT_GEOGRAPHY: Final = Geography.from_mapping(DEPARTMENT_REGION)


def region_of(commune_code: str, geography: Geography | None = None) -> str | None:
    """Return the region code of a commune code, or None: never guessed.

    None when the code is malformed or its department maps to no region in ``geography``
    (default :data:`DEFAULT_GEOGRAPHY`).
    """
    table = DEFAULT_GEOGRAPHY if geography is None else geography
    return table.region_of(commune_code)


@dataclass(frozen=True, slots=True)
class Commune:
    """A real commune: INSEE code, one of its postcodes, name, department, region, weight.

    ``weight`` is a rough population, used to draw big cities more often.
    """

    insee_code: str
    postcode: str
    name: str
    department: str
    region: str
    weight: int


# region -> (INSEE code, postcode, name, department, rough population). Every department's
# prefecture, plus a few big cities. The department is written out by hand on purpose: a
# unit test checks it against department_of() and DEPARTMENT_REGION.
_COMMUNE_ROWS: Final[dict[str, tuple[tuple[str, str, str, str, int], ...]]] = {
    "11": (
        ("75056", "75001", "Paris", "75", 2_165_000),
        ("77288", "77000", "Melun", "77", 40_000),
        ("78646", "78000", "Versailles", "78", 85_000),
        ("91228", "91000", "Évry-Courcouronnes", "91", 67_000),
        ("92050", "92000", "Nanterre", "92", 95_000),
        ("92012", "92100", "Boulogne-Billancourt", "92", 121_000),
        ("93008", "93000", "Bobigny", "93", 53_000),
        ("93066", "93200", "Saint-Denis", "93", 112_000),
        ("93048", "93100", "Montreuil", "93", 109_000),
        ("94028", "94000", "Créteil", "94", 92_000),
        ("95500", "95300", "Pontoise", "95", 32_000),
        ("95127", "95000", "Cergy", "95", 66_000),
        ("95018", "95100", "Argenteuil", "95", 111_000),
    ),
    "24": (
        ("18033", "18000", "Bourges", "18", 64_000),
        ("28085", "28000", "Chartres", "28", 39_000),
        ("36044", "36000", "Châteauroux", "36", 43_000),
        ("37261", "37000", "Tours", "37", 136_000),
        ("41018", "41000", "Blois", "41", 46_000),
        ("45234", "45000", "Orléans", "45", 116_000),
    ),
    "27": (
        ("21231", "21000", "Dijon", "21", 156_000),
        ("25056", "25000", "Besançon", "25", 117_000),
        ("39300", "39000", "Lons-le-Saunier", "39", 17_000),
        ("58194", "58000", "Nevers", "58", 33_000),
        ("70550", "70000", "Vesoul", "70", 15_000),
        ("71270", "71000", "Mâcon", "71", 34_000),
        ("89024", "89000", "Auxerre", "89", 35_000),
        ("90010", "90000", "Belfort", "90", 47_000),
    ),
    "28": (
        ("14118", "14000", "Caen", "14", 106_000),
        ("27229", "27000", "Évreux", "27", 47_000),
        ("50502", "50000", "Saint-Lô", "50", 19_000),
        ("61001", "61000", "Alençon", "61", 26_000),
        ("76540", "76000", "Rouen", "76", 111_000),
        ("76351", "76600", "Le Havre", "76", 170_000),
    ),
    "32": (
        ("02408", "02000", "Laon", "02", 25_000),
        ("59350", "59000", "Lille", "59", 233_000),
        ("59512", "59100", "Roubaix", "59", 98_000),
        ("59599", "59200", "Tourcoing", "59", 97_000),
        ("59183", "59140", "Dunkerque", "59", 87_000),
        ("60057", "60000", "Beauvais", "60", 56_000),
        ("62041", "62000", "Arras", "62", 41_000),
        ("80021", "80000", "Amiens", "80", 133_000),
    ),
    "44": (
        ("08105", "08000", "Charleville-Mézières", "08", 46_000),
        ("10387", "10000", "Troyes", "10", 62_000),
        ("51108", "51000", "Châlons-en-Champagne", "51", 45_000),
        ("51454", "51100", "Reims", "51", 182_000),
        ("52121", "52000", "Chaumont", "52", 22_000),
        ("54395", "54000", "Nancy", "54", 104_000),
        ("55029", "55000", "Bar-le-Duc", "55", 15_000),
        ("57463", "57000", "Metz", "57", 117_000),
        ("67482", "67000", "Strasbourg", "67", 285_000),
        ("68066", "68000", "Colmar", "68", 70_000),
        ("68224", "68100", "Mulhouse", "68", 109_000),
        ("88160", "88000", "Épinal", "88", 32_000),
    ),
    "52": (
        ("44109", "44000", "Nantes", "44", 310_000),
        ("49007", "49000", "Angers", "49", 155_000),
        ("53130", "53000", "Laval", "53", 50_000),
        ("72181", "72000", "Le Mans", "72", 143_000),
        ("85191", "85000", "La Roche-sur-Yon", "85", 55_000),
    ),
    "53": (
        ("22278", "22000", "Saint-Brieuc", "22", 44_000),
        ("29232", "29000", "Quimper", "29", 63_000),
        ("29019", "29200", "Brest", "29", 139_000),
        ("35238", "35000", "Rennes", "35", 217_000),
        ("56260", "56000", "Vannes", "56", 54_000),
    ),
    "75": (
        ("16015", "16000", "Angoulême", "16", 41_000),
        ("17300", "17000", "La Rochelle", "17", 77_000),
        ("19272", "19000", "Tulle", "19", 15_000),
        ("23096", "23000", "Guéret", "23", 13_000),
        ("24322", "24000", "Périgueux", "24", 30_000),
        ("33063", "33000", "Bordeaux", "33", 257_000),
        ("40192", "40000", "Mont-de-Marsan", "40", 30_000),
        ("47001", "47000", "Agen", "47", 33_000),
        ("64445", "64000", "Pau", "64", 77_000),
        ("79191", "79000", "Niort", "79", 59_000),
        ("86194", "86000", "Poitiers", "86", 88_000),
        ("87085", "87000", "Limoges", "87", 132_000),
    ),
    "76": (
        ("09122", "09000", "Foix", "09", 9_500),
        ("11069", "11000", "Carcassonne", "11", 46_000),
        ("12202", "12000", "Rodez", "12", 24_000),
        ("30189", "30000", "Nîmes", "30", 149_000),
        ("31555", "31000", "Toulouse", "31", 480_000),
        ("32013", "32000", "Auch", "32", 22_000),
        ("34172", "34000", "Montpellier", "34", 285_000),
        ("46042", "46000", "Cahors", "46", 20_000),
        ("48095", "48000", "Mende", "48", 12_000),
        ("65440", "65000", "Tarbes", "65", 42_000),
        ("66136", "66000", "Perpignan", "66", 120_000),
        ("81004", "81000", "Albi", "81", 49_000),
        ("82121", "82000", "Montauban", "82", 61_000),
    ),
    "84": (
        ("01053", "01000", "Bourg-en-Bresse", "01", 41_000),
        ("03190", "03000", "Moulins", "03", 20_000),
        ("07186", "07000", "Privas", "07", 8_500),
        ("15014", "15000", "Aurillac", "15", 26_000),
        ("26362", "26000", "Valence", "26", 64_000),
        ("38185", "38000", "Grenoble", "38", 158_000),
        ("42218", "42000", "Saint-Étienne", "42", 173_000),
        ("43157", "43000", "Le Puy-en-Velay", "43", 19_000),
        ("63113", "63000", "Clermont-Ferrand", "63", 147_000),
        ("69123", "69001", "Lyon", "69", 516_000),
        ("69266", "69100", "Villeurbanne", "69", 150_000),
        ("73065", "73000", "Chambéry", "73", 59_000),
        ("74010", "74000", "Annecy", "74", 128_000),
    ),
    "93": (
        ("04070", "04000", "Digne-les-Bains", "04", 16_000),
        ("05061", "05000", "Gap", "05", 40_000),
        ("06088", "06000", "Nice", "06", 342_000),
        ("13055", "13001", "Marseille", "13", 870_000),
        ("13001", "13090", "Aix-en-Provence", "13", 143_000),
        ("83137", "83000", "Toulon", "83", 176_000),
        ("84007", "84000", "Avignon", "84", 91_000),
    ),
    "94": (
        ("2A004", "20000", "Ajaccio", "2A", 71_000),
        ("2A247", "20137", "Porto-Vecchio", "2A", 12_000),
        ("2B033", "20200", "Bastia", "2B", 48_000),
        ("2B050", "20260", "Calvi", "2B", 5_500),
    ),
    "01": (
        ("97105", "97100", "Basse-Terre", "971", 10_000),
        ("97101", "97139", "Les Abymes", "971", 53_000),
        ("97120", "97110", "Pointe-à-Pitre", "971", 15_000),
    ),
    "02": (
        ("97209", "97200", "Fort-de-France", "972", 78_000),
        ("97213", "97232", "Le Lamentin", "972", 40_000),
    ),
    "03": (
        ("97302", "97300", "Cayenne", "973", 61_000),
        ("97311", "97320", "Saint-Laurent-du-Maroni", "973", 45_000),
        ("97304", "97310", "Kourou", "973", 26_000),
    ),
    "04": (
        ("97411", "97400", "Saint-Denis", "974", 150_000),
        ("97415", "97460", "Saint-Paul", "974", 105_000),
    ),
    "06": (
        ("97611", "97600", "Mamoudzou", "976", 71_000),
        ("97608", "97610", "Dzaoudzi", "976", 17_000),
    ),
}

#: Real communes (each department's prefecture plus big cities), in region order.
COMMUNES: Final[tuple[Commune, ...]] = tuple(
    Commune(insee, postcode, name, department, region, weight)
    for region, rows in _COMMUNE_ROWS.items()
    for insee, postcode, name, department, weight in rows
)
