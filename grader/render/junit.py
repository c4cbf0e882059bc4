"""JUnit XML for CI systems: one testcase per check.

Every text goes through clean_text: ElementTree escapes markup but writes control characters (an
ANSI colour in the student's output) that XML 1.0 forbids, which made the whole file unparseable."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from grader.render.safe import clean_text as t
from grader.report import Report


def render_junit(reports: list[Report]) -> str:
    suites = ET.Element("testsuites", name="vitgrade")
    for report in reports:
        cases = report.checks
        suite = ET.SubElement(suites, "testsuite", name=t(f"vitgrade.{report.student}"), tests=str(max(1, len(cases))),
                              failures=str(sum(c.status == "failed" for c in cases)),
                              errors=str(sum(c.status == "error" for c in cases) + (report.status == "error")),
                              skipped=str(sum(c.status in ("skipped", "manual") for c in cases)),
                              time=f"{report.timings.get('total', 0.0):.3f}")
        if report.status != "graded":
            case = ET.SubElement(suite, "testcase", classname=t(f"vitgrade.{report.student}"), name="submission")
            ET.SubElement(case, "error", message=t(report.error)).text = t(report.error)
            continue
        for check in cases:
            case = ET.SubElement(suite, "testcase", classname=f"vitgrade.{check.id.split('.')[0]}", name=check.id,
                                 time=f"{report.timings.get(f'check:{check.id}', 0.0):.3f}")
            if check.status == "failed":
                ET.SubElement(case, "failure", message=t(check.message)).text = t(check.message)
            elif check.status == "error":
                ET.SubElement(case, "error", message=t(check.message)).text = t(check.message)
            elif check.status == "skipped":
                ET.SubElement(case, "skipped", message=t(check.message))
            elif check.status == "manual":
                ET.SubElement(case, "skipped", message=t(f"awaiting manual grading: {check.message}"))
        if report.output:
            ET.SubElement(suite, "system-out").text = t(report.output)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)
