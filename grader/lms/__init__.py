"""The LMS loop: grades into Canvas/Moodle import files, student-facing feedback, Gradescope's autograder."""
