from django.apps import AppConfig


class Hl7Config(AppConfig):
    name = "hl7"
    verbose_name = "HL7 v2 interface"
