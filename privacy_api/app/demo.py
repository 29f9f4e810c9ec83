"""A realistic synthetic demo dataset: hospital stays of synthetic patients."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..crypto.keyring import MasterKeyring
from ..services.datasets import create_dataset, upload_records
from ..services.users import create_user
from ..storage.models import Dataset, User

DEMO_NAME = "demo_patients"
REGIONS = ["north", "south", "east", "west", "central"]
DIAGNOSES = ["cardiac", "respiratory", "orthopedic", "oncology", "maternity", "infection",
             "neurological", "other"]
DEMO_COLUMNS: list[dict[str, Any]] = [
    {"name": "patient_id", "type": "id"},
    {"name": "age", "type": "int", "lower": 0, "upper": 100},
    {"name": "sex", "type": "category", "categories": ["F", "M"]},
    {"name": "region", "type": "category", "categories": REGIONS},
    {"name": "diagnosis", "type": "category", "categories": DIAGNOSES},
    {"name": "cost", "type": "float", "lower": 0, "upper": 50_000},
    {"name": "length_of_stay", "type": "int", "lower": 0, "upper": 60},
    {"name": "readmitted", "type": "bool"},
]


def synthetic_patients(n: int, seed: int = 7) -> list[dict[str, object]]:
    """Synthetic stays; a patient has 1-4 stays. Demo data, so a seeded PRNG is right here."""
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, max(1, int(n * 0.6)), n)
    age = np.clip(rng.gamma(6.0, 8.0, n), 0, 100).astype(int)
    sex = rng.choice(2, n)
    region = rng.choice(len(REGIONS), n, p=[0.22, 0.2, 0.18, 0.15, 0.25])
    diag = rng.choice(len(DIAGNOSES), n, p=[0.18, 0.16, 0.14, 0.08, 0.1, 0.14, 0.08, 0.12])
    stay = np.clip(rng.poisson(2 + age / 15), 0, 60)
    cost = np.round(np.clip(rng.lognormal(7.5 + stay * 0.08, 0.6), 50, 80_000), 2)
    readmit = rng.random(n) < (0.05 + age / 800)
    return [
        {"patient_id": f"P{p:07d}", "age": int(a), "sex": "FM"[s], "region": REGIONS[r],
         "diagnosis": DIAGNOSES[d], "cost": float(c), "length_of_stay": int(los),
         "readmitted": bool(rm)}
        for p, a, s, r, d, c, los, rm in zip(patients, age, sex, region, diag, cost, stay,
                                              readmit, strict=True)
    ]


def ensure_demo_dataset(session: Session, keyring: MasterKeyring,
                        records: int) -> tuple[Dataset, bool]:
    existing = session.scalar(
        select(Dataset).where(Dataset.name == DEMO_NAME, Dataset.deleted_at.is_(None))
    )
    if existing is not None:
        return existing, False
    owner = session.scalar(select(User).where(User.name == "demo_owner"))
    if owner is None:
        owner, _ = create_user(session, "demo_owner", "owner")
    dataset = create_dataset(
        session, keyring, owner, name=DEMO_NAME, columns=DEMO_COLUMNS,
        privacy_unit={"column": "patient_id", "max_rows": 3}, epsilon_cap=None, delta_cap=None,
    )
    body = orjson.dumps(synthetic_patients(records))
    upload_records(session, keyring, owner, dataset.id, "application/json", io.BytesIO(body))
    return dataset, True
