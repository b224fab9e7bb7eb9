"""`manage.py seed_demo`: a realistic demo day built through the workflow core.

About 40 patients (many Vietnamese, in UTF-8), orders across CT, MR, US and CR scheduled
through today in RIS_TIME_ZONE, a few left ORDERED for a scheduler, the modalities (rooms,
open 07:00-17:00) to run them on, and the procedure catalogue. Re-running adds nothing
twice (patients and placer numbers are keyed).
"""

import datetime as dt
import random

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from ris import workflow
from ris.models import ImagingOrder, Priority, ProcedureType
from ris.timeutil import site_zone
from worklist.models import Modality

MODALITIES = [
    ("CT1", "CT", "CT_ROOM_1", "CT 1"),
    ("MR1", "MR", "MR_ROOM_1", "MR 1"),
    ("US1", "US", "US_ROOM_1", "US 1"),
    ("CR1", "CR", "XR_ROOM_1", "XR 1"),
]
PROCEDURES = {
    "CT": [
        ("CTHEAD", "CT head without contrast"),
        ("CTCHEST", "CT chest with contrast"),
        ("CTABD", "CT abdomen and pelvis"),
    ],
    "MR": [
        ("MRBRAIN", "MR brain with and without contrast"),
        ("MRKNEE", "MR knee left"),
        ("MRLSPINE", "MR lumbar spine"),
    ],
    "US": [("USABD", "US abdomen complete"), ("USTHYR", "US thyroid"), ("USOB", "US obstetric")],
    "CR": [("CRCHEST", "XR chest PA and lateral"), ("CRHAND", "XR hand right"), ("CRKNEE", "XR knee both")],
}
MINUTES = {"CT": 20, "MR": 40, "US": 20, "CR": 10}
OPENS, CLOSES = dt.time(7, 0), dt.time(17, 0)
FAMILY = [
    "Nguyễn",
    "Trần",
    "Lê",
    "Phạm",
    "Hoàng",
    "Huỳnh",
    "Phan",
    "Vũ",
    "Võ",
    "Đặng",
    "Bùi",
    "Đỗ",
    "Hồ",
    "Ngô",
    "Dương",
    "Lý",
]
MIDDLE = ["Văn", "Thị", "Minh", "Ngọc", "Đức", "Thu", "Quang", "Hữu", "Thanh", ""]
GIVEN = [
    "An",
    "Bình",
    "Châu",
    "Dũng",
    "Đào",
    "Giang",
    "Hà",
    "Hải",
    "Hạnh",
    "Hùng",
    "Khánh",
    "Lan",
    "Linh",
    "Mai",
    "Nam",
    "Phương",
    "Quân",
    "Sơn",
    "Thảo",
    "Trang",
    "Tuấn",
    "Việt",
    "Xuân",
    "Yến",
]
OTHERS = [
    ("Müller", "Jürgen"),
    ("Smith", "Anna"),
    ("Dubois", "Élodie"),
    ("García", "José"),
    ("Kim", "Min-jun"),
    ("Tanaka", "Hiroshi"),
]
PHYSICIANS = ["Trần^Quốc^Bảo^^BS.", "Lê^Thị^Hồng^^BS.", "Phạm^Văn^Long^^BS.", "Smith^Anna^^^Dr."]


class Command(BaseCommand):
    help = "Create a realistic demo day: ~40 patients, orders across CT/MR/US/CR, today's schedule."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--patients", type=int, default=40)
        parser.add_argument("--seed", type=int, default=2026)

    @transaction.atomic
    def handle(self, *args, **options) -> None:
        rng = random.Random(options["seed"])
        for ae, modality, station, location in MODALITIES:
            room = {"modality": modality, "station_name": station, "location": location}
            Modality.objects.get_or_create(ae_title=ae, defaults={**room, "opens_at": OPENS, "closes_at": CLOSES})
        for modality, procedures in PROCEDURES.items():
            for code, description in procedures:
                ProcedureType.objects.get_or_create(
                    code=code,
                    scheme="LOCAL",
                    defaults={"description": description, "modality": modality, "duration_minutes": MINUTES[modality]},
                )
        today = timezone.now().astimezone(site_zone()).date()
        slots = {m: dt.datetime.combine(today, dt.time(7, 30), tzinfo=site_zone()) for _, m, _, _ in MODALITIES}
        actor = workflow.Actor("system", "seed_demo")
        created = 0
        for n in range(1, options["patients"] + 1):
            patient = workflow.register_patient(actor, f"BN{n:06d}", "BV-DEMO", self.demographics(rng, n))
            placer = f"DEMO{today:%y%m%d}{n:04d}"
            if ImagingOrder.objects.filter(placer_order_number=placer, placer_issuer="HIS").exists():
                continue
            ae, modality, station, location = MODALITIES[n % len(MODALITIES)]
            code, description = rng.choice(PROCEDURES[modality])
            start = None
            if n % 9 != 0:  # every ninth order waits for a scheduler
                start = slots[modality]
                slots[modality] += dt.timedelta(minutes=MINUTES[modality])
            step = workflow.StepRequest(
                modality=modality,
                start=start,
                station_ae_title=ae if start else "",
                station_name=station if start else "",
                location=location,
                description=description,
                protocol_codes=[{"code": code, "scheme": "LOCAL", "meaning": description}],
            )
            request = workflow.OrderRequest(
                placer_order_number=placer,
                placer_issuer="HIS",
                ordering_physician=rng.choice(PHYSICIANS),
                referring_physician=rng.choice(PHYSICIANS),
                reason=rng.choice(["Đau đầu kéo dài", "Ho kéo dài", "Kiểm tra định kỳ", "Chấn thương", "Follow-up"]),
                priority=Priority.STAT if n % 13 == 0 else Priority.ROUTINE,
                patient_location="OPD",
                procedures=[
                    workflow.ProcedureRequest(
                        modality=modality,
                        procedure_code=code,
                        procedure_code_scheme="LOCAL",
                        procedure_description=description,
                        steps=[step],
                    )
                ],
            )
            workflow.place_order(actor, patient, request)
            created += 1
        self.stdout.write(
            f"demo day {today}: {options['patients']} patients, {created} new orders, {len(MODALITIES)} modalities"
        )

    @staticmethod
    def demographics(rng: random.Random, n: int) -> workflow.Demographics:
        if n % 7 == 0:
            family, given = OTHERS[n % len(OTHERS)]
            middle = ""
        else:
            family, middle, given = rng.choice(FAMILY), rng.choice(MIDDLE), rng.choice(GIVEN)
        return workflow.Demographics(
            family_name=family,
            given_name=given,
            middle_name=middle,
            birth_date=dt.date(rng.randint(1940, 2020), rng.randint(1, 12), rng.randint(1, 28)),
            sex="F" if middle == "Thị" or n % 2 else "M",
        )
