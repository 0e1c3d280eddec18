"""Texts for the e5-small fidelity test: bundled sample listings plus handwritten shopper queries, reviews,
code-switching and whitespace/Unicode edge cases, in all 9 languages (th vi id ms fil my km lo en)."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "catalog" / "samples"
LANGS = ("th", "vi", "id", "ms", "fil", "my", "km", "lo", "en")

QUERIES = {
    "th": ["รองเท้าวิ่งผู้ชาย ราคาไม่เกิน 2000", "ครีมกันแดดสำหรับผิวมัน", "หูฟังบลูทูธ ตัดเสียงรบกวน",
           "เสื้อยืดโอเวอร์ไซส์ผู้หญิง สีดำ"],
    "vi": ["tai nghe bluetooth chống ồn giá rẻ", "kem chống nắng cho da dầu", "giày chạy bộ nam size 42",
           "nồi chiên không dầu loại nào tốt"],
    "id": ["sepatu lari pria murah", "sunscreen untuk kulit berminyak", "hp samsung ram 8gb di bawah 3 juta",
           "kemeja batik wanita lengan pendek"],
    "ms": ["kasut sukan lelaki murah", "pelembap muka untuk kulit kering", "periuk nasi elektrik 1.8 liter",
           "tudung bawal cotton warna hitam"],
    "fil": ["murang sapatos pantakbo para sa lalaki", "sunscreen para sa oily skin", "cellphone na mura pero maganda",
            "electric fan na tahimik"],
    "my": ["အမျိုးသားပြေးဖိနပ် ဈေးသက်သာ", "နေကာခရင်မ် အဆီပြန်အသားအရေ", "ဘလူးတုသ် နားကြပ်", "ထမင်းပေါင်းအိုး"],
    "km": ["ស្បែកជើងរត់បុរស តម្លៃថោក", "ឡេការពារកម្តៅថ្ងៃ", "កាសប៊្លូធូស", "ឆ្នាំងដាំបាយអគ្គិសនី"],
    "lo": ["ເກີບແລ່ນຜູ້ຊາຍ ລາຄາຖືກ", "ຄີມກັນແດດ ສຳລັບຜິວມັນ", "ຫູຟັງບລູທູດ", "ໝໍ້ຫຸງເຂົ້າໄຟຟ້າ"],
    "en": ["cheap running shoes for men", "waterproof phone case iphone 15", "best air fryer under $100",
           "wireless earbuds with noise cancelling"],
}
REVIEWS = {
    "th": ["ของดีมาก ส่งไว แพ็คมาดี จะกลับมาซื้ออีก", "สีไม่ตรงปก ผิดหวังนิดหน่อย", "ใช้ได้ 2 วันก็พังแล้ว ไม่แนะนำ"],
    "vi": ["Hàng đẹp, giao nhanh, đóng gói cẩn thận. Sẽ ủng hộ shop tiếp!", "Màu không giống hình, hơi thất vọng",
           "Dùng được hai ngày thì hỏng, không nên mua"],
    "id": ["Barang bagus, pengiriman cepat, seller ramah. Mantap!", "Warnanya beda sama foto, agak kecewa",
           "Baru dipakai 2 hari sudah rusak, jangan beli"],
    "ms": ["Barang sampai cepat, kualiti terbaik, terima kasih seller", "Saiz kecil sikit dari jangkaan",
           "Produk rosak semasa sampai, sangat kecewa"],
    "fil": ["Ang ganda ng item, mabilis dumating. Salamat seller!", "Hindi katulad ng nasa picture ang kulay",
            "Sira agad after two days, hindi ko irerekomenda"],
    "my": ["ပစ္စည်းကောင်းတယ် ပို့တာမြန်တယ် ကျေးဇူးပါ", "အရောင်က ပုံနဲ့မတူဘူး", "နှစ်ရက်ပဲသုံးရသေးတယ် ပျက်သွားပြီ"],
    "km": ["ទំនិញល្អណាស់ ដឹកជញ្ជូនលឿន អរគុណ", "ពណ៌មិនដូចរូបភាពទេ", "ប្រើបានពីរថ្ងៃខូចហើយ"],
    "lo": ["ສິນຄ້າດີຫຼາຍ ສົ່ງໄວ ຂອບໃຈ", "ສີບໍ່ຄືຮູບ ຜິດຫວັງໜ້ອຍໜຶ່ງ", "ໃຊ້ໄດ້ສອງມື້ກໍເພ ບໍ່ແນະນຳ"],
    "en": ["Great quality, fast shipping, would buy again!", "Color is different from the photos, a bit disappointed",
           "Broke after two days. Do not recommend."],
}
CODE_SWITCHING = [
    "iphone 15 pro max เคส กันกระแทก", "mua giày Nike Air Force 1 chính hãng ở đâu", "HP murah tapi kamera bagus",
    "shopee sale 11.11 baju raya", "order ko yung wireless mouse, super fast delivery po", "Samsung Galaxy ဖုန်း ဈေးနှုန်း",
    "ទូរស័ព្ទ iPhone 13 ដៃពីរ", "ໂທລະສັບ Samsung A54 ລາຄາ", "sữa rửa mặt Cerave cho da dầu mụn",
    "kasut Adidas ori ke fake?", "ครีม La Roche-Posay ของแท้ไหม", "Laptop gaming ASUS ROG rẻ nhất",
]
EDGE_CASES = [
    "  leading and trailing spaces  ", "double  spaces   inside", "tabs\tand\nnewlines\r\nhere",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３", "price: ฿1,299.00 (–20%) ™ ½ ﬁne", "emoji 😀👍🔥 sale!!!", "",
    "no-break\u00a0space and zero\u200bwidth", "Vietnamese decomposed: Vie\u0302\u0323t Nam", "ÀÉÎÕÜ àéîõü ñ ç",
]


def _sample_rows(lang: str) -> list[dict]:
    path = SAMPLES / f"{lang}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fidelity_texts() -> list[tuple[str, str]]:
    """(lang or kind, text) pairs: 12 titles, 3 descriptions and 2 categories per language from the bundled
    samples (spread over the file), and the handwritten lists above."""
    out: list[tuple[str, str]] = []
    for lang in LANGS:
        rows = _sample_rows(lang)
        step = max(1, len(rows) // 12)
        out += [(lang, r["title"]) for r in rows[::step][:12]]
        out += [(lang, r["description"]) for r in rows[5::40][:3] if r.get("description")]
        out += [(lang, r["category"]) for r in rows[7::80][:2]]
        out += [(lang, q) for q in QUERIES[lang]] + [(lang, r) for r in REVIEWS[lang]]
    out += [("mixed", t) for t in CODE_SWITCHING] + [("edge", t) for t in EDGE_CASES]
    return out
