"""Drives the audit console in headless Chromium (Debian's chromium and chromedriver) as an
auditor would: a refused sign-in, a sign-in, a search for a transaction, opening it, running
verification. Prints what the page showed as JSON; takes a screenshot.

usage: console.py BASE_URL TOKEN TX_ID SERVER_CERT_PEM SCREENSHOT_PNG
"""

import base64
import hashlib
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait


def spki_pin(cert_path):
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def main():
    base, token, tx, cert, screenshot = sys.argv[1:6]
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1200",
        # trust exactly the gateway's key, nothing else (its CA is a development one)
        "--ignore-certificate-errors-spki-list=" + spki_pin(cert),
    ]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 30)
    seen = {}
    try:
        driver.get(base + "/console/")
        seen["title"] = driver.title

        driver.find_element(By.ID, "token").send_keys("not-a-token")
        driver.find_element(By.ID, "signin-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "signin-result"), "refused"))
        seen["bad_signin"] = driver.find_element(By.ID, "signin-result").text
        seen["search_hidden_after_bad_signin"] = not driver.find_element(By.ID, "search").is_displayed()

        box = driver.find_element(By.ID, "token")
        box.clear()
        box.send_keys(token)
        driver.find_element(By.ID, "signin-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "signin-result"), "signed in"))
        seen["signin"] = driver.find_element(By.ID, "signin-result").text
        seen["who"] = driver.find_element(By.ID, "who").text

        driver.find_element(By.ID, "search-tx").send_keys(tx)
        driver.find_element(By.ID, "search-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "search-result"), "records found"))
        seen["search"] = driver.find_element(By.ID, "search-result").text
        seen["rows"] = len(driver.find_elements(By.CSS_SELECTOR, "#records tbody tr"))

        driver.find_element(By.CSS_SELECTOR, "a.open-tx").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "tx-proofs-result"), "proofs"))
        seen["transaction"] = driver.find_element(By.ID, "tx-id").text
        seen["transaction_records"] = driver.find_element(By.ID, "tx-records").text
        seen["proofs"] = driver.find_element(By.ID, "tx-proofs-result").text

        driver.find_element(By.ID, "verify-button").click()
        wait.until(
            lambda d: d.find_element(By.ID, "verify-result").text not in ("", "verifying...")
        )
        seen["verify"] = driver.find_element(By.ID, "verify-result").text
        seen["page_text"] = driver.find_element(By.TAG_NAME, "body").text
        driver.save_screenshot(screenshot)
        seen["console_errors"] = [
            entry["message"]
            for entry in driver.get_log("browser")
            if entry.get("level") == "SEVERE"
        ]
    finally:
        driver.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
