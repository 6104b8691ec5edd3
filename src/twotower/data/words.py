"""Word lists of the sponsored-search simulator.

Real English words (not ``w123`` tokens) so that text features, n-gram hashing and the demo output
behave like they would on real queries and ad titles. Every word belongs to exactly one topic or to
the generic lists: lexical overlap between a query and an ad of another topic can then only come
from generic words, which is what makes the legacy lexical matcher produce low-relevance candidates.
"""
from __future__ import annotations

#: topic name -> its words (20-30 each, single tokens, disjoint across topics).
TOPICS: dict[str, list[str]] = {
    "running shoes": [
        "running", "shoes", "sneakers", "marathon", "trail", "jogging", "cushioning", "sprint",
        "trainers", "midsole", "insole", "laces", "stride", "pronation", "spikes", "racing",
        "tempo", "runner", "treadmill", "outsole", "heel", "toebox", "waterproof", "lightweight",
    ],
    "laptops": [
        "laptop", "notebook", "ultrabook", "processor", "ssd", "ram", "keyboard", "touchpad",
        "chromebook", "macbook", "battery", "display", "charger", "intel", "ryzen", "thinkpad",
        "docking", "webcam", "hinge", "convertible", "graphics", "workstation",
    ],
    "travel": [
        "hotel", "flights", "resort", "vacation", "booking", "airfare", "beach", "cruise",
        "hostel", "suite", "itinerary", "passport", "luggage", "getaway", "tour", "airport",
        "honeymoon", "villa", "backpacking", "sightseeing", "inn", "destination",
    ],
    "insurance": [
        "insurance", "policy", "premium", "coverage", "claim", "deductible", "liability",
        "quote", "insurer", "life", "health", "auto", "home", "renters", "underwriting", "annuity",
        "term", "beneficiary", "dental", "vision", "broker",
    ],
    "pets": [
        "dog", "cat", "puppy", "kitten", "leash", "collar", "kibble", "aquarium", "hamster",
        "parrot", "grooming", "veterinary", "litter", "treats", "chew", "kennel", "flea",
        "adoption", "breed", "terrier", "retriever", "catnip", "birdcage",
    ],
    "gardening": [
        "garden", "seeds", "compost", "soil", "shovel", "hose", "mulch", "fertilizer", "pruning",
        "greenhouse", "tulips", "roses", "lawn", "mower", "rake", "planter", "weeds", "trellis",
        "perennials", "shrubs", "seedlings", "sprinkler", "wheelbarrow",
    ],
    "cooking": [
        "recipe", "baking", "pasta", "sauce", "grill", "skillet", "spices", "oven", "bread",
        "dough", "soup", "roast", "marinade", "vegan", "dessert", "cookbook", "chef", "knife",
        "cutting", "saute", "braise", "herbs", "flour",
    ],
    "cars": [
        "car", "sedan", "suv", "truck", "dealer", "lease", "engine", "tires", "hybrid",
        "electric", "mileage", "pickup", "coupe", "roadster", "transmission", "brakes",
        "horsepower", "dealership", "wagon", "minivan", "carwash", "wipers",
    ],
    "mobile phones": [
        "phone", "smartphone", "iphone", "android", "galaxy", "pixel", "unlocked", "carrier",
        "prepaid", "sim", "case", "screen", "protector", "camera", "5g", "plan", "contract",
        "charging", "earbuds", "foldable", "refurbished",
    ],
    "fitness": [
        "gym", "workout", "dumbbells", "yoga", "pilates", "kettlebell", "protein", "cardio",
        "squat", "barbell", "membership", "trainer", "stretching", "crossfit", "abs", "weights",
        "rowing", "spinning", "bench", "mat", "resistance", "bands",
    ],
    "kitchen appliances": [
        "blender", "toaster", "microwave", "refrigerator", "dishwasher", "mixer", "kettle",
        "airfryer", "juicer", "coffeemaker", "espresso", "cooktop", "range", "freezer",
        "steamer", "crockpot", "percolator", "waffle", "grinder", "stove", "hood",
    ],
    "photography": [
        "dslr", "mirrorless", "lens", "tripod", "aperture", "shutter", "zoom", "flash",
        "photographer", "portrait", "telephoto", "wideangle", "canon", "nikon", "sony", "drone",
        "gimbal", "lightroom", "studio", "filter", "viewfinder", "prints",
    ],
    "jewelry": [
        "necklace", "ring", "bracelet", "earrings", "diamond", "gold", "silver", "pendant",
        "engagement", "wedding", "gemstone", "sapphire", "pearl", "jeweler", "platinum", "charm",
        "anklet", "brooch", "carat", "emerald", "locket",
    ],
    "furniture": [
        "sofa", "couch", "table", "chair", "bed", "mattress", "dresser", "bookshelf", "wardrobe",
        "recliner", "ottoman", "desk", "cabinet", "nightstand", "sectional", "futon", "armchair",
        "headboard", "upholstery", "stool", "loveseat",
    ],
    "gaming": [
        "game", "console", "playstation", "xbox", "nintendo", "controller", "gamer", "esports",
        "rpg", "shooter", "multiplayer", "headset", "joystick", "steam", "arcade", "mmorpg",
        "switch", "gpu", "streaming", "speedrun", "dlc",
    ],
    "music instruments": [
        "guitar", "piano", "drums", "violin", "ukulele", "bass", "keyboardist", "amplifier",
        "saxophone", "trumpet", "cello", "flute", "strings", "pedal", "synthesizer", "metronome",
        "lessons", "acoustic", "clarinet", "harmonica", "drumsticks",
    ],
    "baby products": [
        "baby", "stroller", "diapers", "crib", "pacifier", "formula", "bottle", "onesie",
        "nursery", "infant", "toddler", "carseat", "wipes", "teether", "bib", "playpen",
        "swaddle", "highchair", "bassinet", "rattle", "newborn",
    ],
    "skincare": [
        "moisturizer", "serum", "sunscreen", "cleanser", "toner", "retinol", "acne", "wrinkle",
        "skincare", "lotion", "exfoliant", "collagen", "hyaluronic", "spf", "facial", "mask",
        "pores", "eczema", "dermatologist", "cream", "antiaging",
    ],
    "banking": [
        "bank", "loan", "mortgage", "credit", "savings", "checking", "account", "interest",
        "refinance", "debit", "card", "apr", "lender", "deposit", "overdraft", "personal",
        "student", "payday", "atm", "investment", "brokerage",
    ],
    "movies": [
        "movie", "film", "cinema", "tickets", "trailer", "showtimes", "actor", "director",
        "comedy", "thriller", "horror", "documentary", "premiere", "blockbuster", "sequel",
        "imax", "theater", "popcorn", "subtitles", "anime", "boxoffice",
    ],
}

#: Pairs of topics a user looking for one may still find the other somewhat relevant.
RELATED_TOPICS: list[tuple[str, str]] = [
    ("running shoes", "fitness"),
    ("laptops", "gaming"),
    ("laptops", "mobile phones"),
    ("mobile phones", "photography"),
    ("insurance", "banking"),
    ("insurance", "cars"),
    ("cooking", "kitchen appliances"),
    ("gardening", "furniture"),
    ("jewelry", "skincare"),
    ("gaming", "movies"),
    ("baby products", "furniture"),
    ("travel", "photography"),
]

#: Generic words honest advertisers also use in titles and users in queries ("cheap laptops").
GENERIC_WORDS: list[str] = [
    "best", "cheap", "free", "deals", "sale", "official", "online", "discount", "top", "new",
    "buy", "shop", "review", "compare", "near", "affordable", "quality", "store",
]

#: Lure words of click-bait titles: they attract clicks, not relevance.
LURE_WORDS: list[str] = [
    "amazing", "shocking", "secret", "unbelievable", "win", "limited", "exclusive", "instant",
    "guaranteed", "miracle", "hurry", "hack", "trick", "revealed", "giveaway", "bonus",
]
