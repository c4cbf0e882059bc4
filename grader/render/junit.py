"""JUnit XML for CI systems: one testcase per check."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from grader.report import Report


def render_junit(reports: list[Report]) -> str:
    suites = ET.Element("testsuites", name="vitgrade")
    for report in reports:
        cases = report.checks
        suite = ET.SubElement(suites, "testsuite", name=f"vitgrade.{report.student}", tests=str(max(1, len(cases))),
                              failures=str(sum(c.status == "failed" for c in cases)),
                              errors=str(sum(c.status == "error" for c in cases) + (report.status == "error")),
                              skipped=str(sum(c.status in ("skipped", "manual") for c in cases)),
                              time=f"{report.timings.get('total', 0.0):.3f}")
        if report.status != "graded":
            case = ET.SubElement(suite, "testcase", classname=f"vitgrade.{report.student}", name="submission")
            ET.SubElement(case, "error", message=report.error).text = report.error
            continue
        for check in cases:
            case = ET.SubElement(suite, "testcase", classname=f"vitgrade.{check.id.split('.')[0]}", name=check.id,
                                 time=f"{report.timings.get(f'check:{check.id}', 0.0):.3f}")
            if check.status == "failed":
                ET.SubElement(case, "failure", message=check.message).text = check.message
            elif check.status == "error":
                ET.SubElement(case, "error", message=check.message).text = check.message
            elif check.status == "skipped":
                ET.SubElement(case, "skipped", message=check.message)
            elif check.status == "manual":
                ET.SubElement(case, "skipped", message=f"awaiting manual grading: {check.message}")
        if report.output:
            ET.SubElement(suite, "system-out").text = report.output
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)
